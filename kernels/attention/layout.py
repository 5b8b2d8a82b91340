"""Which tokens of the full sequence each rank holds, and moving between the two views.

Two layouts of a length-``N`` sequence over ``P`` ranks:

- ``"contiguous"``: rank ``r`` holds chunk ``r`` of ``P`` equal chunks. Requires
  ``N % P == 0``. Used by :func:`ulysses_attention`, :func:`tokenring_attention` and
  ``ring_attention(layout="contiguous")``.
- ``"zigzag"``: the sequence is cut into ``2P`` equal chunks and rank ``r`` holds chunks
  ``r`` and ``2P-1-r``, concatenated in that order. Requires ``N % (2P) == 0``. With causal
  masking every rank then does the same work. Used by ``ring_attention`` (the default).

Other lengths raise ``ValueError``; for causal attention, right-padding the sequence to an
allowed length is exact (no real token attends to a later one) as long as the padded
positions are dropped before the loss.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from .. import comm

__all__ = ["LAYOUTS", "check_layout", "shard_sequence", "gather_sequence", "shard_of"]

LAYOUTS = ("zigzag", "contiguous")


def check_layout(layout: str) -> int:
    """Validate ``layout``; return how many chunks per rank it cuts the sequence into."""
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    return 2 if layout == "zigzag" else 1


def _chunk_ids(layout: str, rank: int, size: int) -> tuple[int, ...]:
    return (rank, 2 * size - 1 - rank) if layout == "zigzag" else (rank,)


def shard_sequence(
    x: torch.Tensor,
    *,
    group: dist.ProcessGroup | None = None,
    layout: str = "zigzag",
    dim: int = 2,
) -> torch.Tensor:
    """This rank's shard of the full sequence ``x`` (no communication; differentiable).

    Args:
        x: full tensor, e.g. ``[B, H, N, D]`` with the sequence on ``dim``.
        layout: ``"zigzag"`` (``N % 2P == 0``) or ``"contiguous"`` (``N % P == 0``).

    Returns:
        ``x`` with ``N / P`` positions on ``dim``: the chunks this rank holds, in order.

    Example:
        >>> x = torch.arange(8.0).view(1, 1, 8, 1)
        >>> shard_sequence(x).flatten().tolist()  # one process: the whole sequence
        [0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0]
    """
    per_rank = check_layout(layout)
    size, me = comm.world_size(group), comm.rank(group)
    n = x.shape[dim]
    if n % (per_rank * size):
        raise ValueError(
            f"{layout} layout over {size} ranks needs a sequence length divisible by "
            f"{per_rank * size}, got {n}; for causal attention, right-pad to a multiple"
        )
    return shard_of(x, layout, me, size, dim=dim)


def shard_of(x: torch.Tensor, layout: str, rank: int, size: int, *, dim: int = 2) -> torch.Tensor:
    """Rank ``rank``'s shard (of ``size``) of the full sequence ``x`` on ``dim``."""
    chunks = x.chunk(check_layout(layout) * size, dim=dim)
    return torch.cat([chunks[i] for i in _chunk_ids(layout, rank, size)], dim=dim)


def gather_sequence(
    x: torch.Tensor,
    *,
    group: dist.ProcessGroup | None = None,
    layout: str = "zigzag",
    dim: int = 2,
) -> torch.Tensor:
    """The full sequence from every rank's shard ``x`` (one all-gather; not differentiable).

    Inverse of :func:`shard_sequence`: ``gather_sequence(shard_sequence(x)) == x``.

    Example:
        >>> gather_sequence(torch.ones(1, 1, 4, 1)).shape
        torch.Size([1, 1, 4, 1])
    """
    per_rank = check_layout(layout)
    size = comm.world_size(group)
    if x.shape[dim] % per_rank:
        raise ValueError(f"{layout} shards hold {per_rank} equal chunks; got length "
                         f"{x.shape[dim]} on dim {dim}")
    shards = comm.all_gather(x.detach(), group)
    chunks: list[torch.Tensor | None] = [None] * (per_rank * size)
    for r in range(size):
        for i, part in zip(_chunk_ids(layout, r, size), shards[r].chunk(per_rank, dim=dim)):
            chunks[i] = part
    return torch.cat(chunks, dim=dim)
