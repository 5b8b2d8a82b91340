"""Document masks for packed sequences: a query attends only keys of its own document.

A packed sample holds several documents back to back; ``segments`` (int64 ``[B, n]``,
this rank's tokens in the same layout as ``q``) gives each token's document id, ids
non-decreasing along the full sequence, a document being a run of equal ids. The kernels
need the ids of the *keys* where each block is computed, which may live on another rank,
so :func:`gather_ids` all-gathers every rank's ids once per call (``8 B n`` bytes to each
peer, kept for the backward) instead of moving them with every block and head pass.

:func:`document_block` turns a block of the schedule into the boolean mask of allowed
(query, key) pairs, or ``None`` when no pair is allowed, so the kernels skip it (no
compute, and for TokenRing no partial sent).
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from .. import comm
from . import schedule
from .layout import gather_sequence, shard_of

__all__ = ["check_segments", "gather_ids", "document_block", "block_mask"]


def check_segments(name: str, segments: torch.Tensor | None, q: torch.Tensor) -> None:
    """Raise ``ValueError`` unless ``segments`` is None or int64 ``[B, n]`` on q's device."""
    if segments is None:
        return
    want = (q.shape[0], q.shape[2])
    if not isinstance(segments, torch.Tensor) or segments.dtype != torch.int64 \
            or tuple(segments.shape) != want or segments.device != q.device:
        got = (f"{segments.dtype} {tuple(segments.shape)} on {segments.device}"
               if isinstance(segments, torch.Tensor) else type(segments).__name__)
        raise ValueError(
            f"{name}: segments must be an int64 tensor [batch, local_seq] = {want} on "
            f"{q.device} (the document id of each of this rank's tokens, laid out like q), "
            f"got {got}"
        )


def gather_ids(
    name: str, segments: torch.Tensor, group: dist.ProcessGroup | None, layout: str
) -> torch.Tensor:
    """Every rank's document ids, ``[P, B, n]`` (one all-gather); checks that the ids are
    non-decreasing along the full sequence, else equal ids of two runs would merge them."""
    full = gather_sequence(segments, group=group, layout=layout, dim=1)
    if bool((full.diff(dim=1) < 0).any()):
        raise ValueError(f"{name}: segments must be non-decreasing along the full sequence "
                         f"(a document is a run of equal ids; padding a run of its own)")
    size = comm.world_size(group)
    return torch.stack([shard_of(full, layout, r, size, dim=1) for r in range(size)])


def block_mask(q_ids: torch.Tensor, kv_ids: torch.Tensor, causal: bool) -> torch.Tensor | None:
    """Allowed pairs ``[B, 1, Lq, Lk]`` (bool) of queries with ids ``q_ids [B, Lq]`` and
    keys ``kv_ids [B, Lk]``: same document and, with ``causal`` (a square block of
    positions in order), key not after query. ``None`` if no pair is allowed.

    Example:
        >>> ids = torch.tensor([[0, 0, 1]])
        >>> block_mask(ids, ids, True)[0, 0].int().tolist()
        [[1, 0, 0], [1, 1, 0], [0, 0, 1]]
    """
    allowed = q_ids[:, :, None] == kv_ids[:, None, :]
    if causal:
        allowed &= torch.ones(allowed.shape[1:], dtype=torch.bool, device=allowed.device).tril()
    return allowed.unsqueeze(1) if bool(allowed.any()) else None


def document_block(
    layout: str, causal: bool, q_rank: int, kv_rank: int, n: int, ids: torch.Tensor | None
) -> tuple[schedule.Block, torch.Tensor | None] | None:
    """:func:`.schedule.block` narrowed by the documents: ``(block, mask)``, the mask
    ``None`` without ``ids``; ``None`` when the block is empty either way."""
    blk = schedule.block(layout, causal, q_rank, kv_rank, n)
    if blk is None or ids is None:
        return None if blk is None else (blk, None)
    mask = block_mask(ids[q_rank][:, blk.q], ids[kv_rank][:, blk.kv], blk.causal)
    return None if mask is None else (blk, mask)
