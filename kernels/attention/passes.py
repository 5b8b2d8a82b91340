"""Running a sequence-parallel kernel one group of heads at a time, to bound its memory.

Heads are independent in attention, so a kernel may run its whole ring once per group of
K/V heads (with the query heads that read them) and write each pass's results into head
slices of the full outputs: the result is what one pass gives, to within a few float
ulps (torch's CPU flash kernel may round differently for another number of heads, measured
6e-8 in fp32 for the zigzag ring; tokenring and the contiguous ring agree bit for bit). What shrinks is
everything that lives only during a pass: the K/V (or Q) blocks in flight and their
receive buffers, the travelling gradients, the per-block outputs and the copies the fused
kernel makes. With ``g`` K/V heads per pass out of ``Hkv``, those buffers are ``g/Hkv`` of
their one-pass size; the inputs, ``out`` and the gradients stay whole. The price is
``Hkv/g`` times as many (smaller) messages and kernel calls.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

__all__ = ["head_groups", "by_head_groups"]

HeadGroup = tuple[slice, slice]


def head_groups(name: str, q_heads: int, kv_heads: int, kv_heads_per_pass: int) -> list[HeadGroup]:
    """``(query head slice, K/V head slice)`` of each pass, ``kv_heads_per_pass`` K/V heads
    at a time (the last pass may hold fewer); more than ``kv_heads`` means one pass.

    Example:
        >>> head_groups("ring_attention", 4, 2, 1)
        [(slice(0, 2, None), slice(0, 1, None)), (slice(2, 4, None), slice(1, 2, None))]
    """
    if isinstance(kv_heads_per_pass, bool) or not isinstance(kv_heads_per_pass, int) \
            or kv_heads_per_pass < 1:
        raise ValueError(f"{name}: kv_heads_per_pass must be a positive integer, got "
                         f"{kv_heads_per_pass!r}")
    per_kv = q_heads // kv_heads
    starts = range(0, kv_heads, kv_heads_per_pass)
    return [(slice(h * per_kv, min(h + kv_heads_per_pass, kv_heads) * per_kv),
             slice(h, min(h + kv_heads_per_pass, kv_heads))) for h in starts]


def by_head_groups(
    fn: Callable[..., Sequence[torch.Tensor]],
    tensors: Sequence[torch.Tensor],
    results: Sequence[torch.Tensor],
    groups: Sequence[HeadGroup],
) -> None:
    """For each head group, call ``fn`` on that group's slices of ``tensors`` and copy what
    it returns into the same slices of ``results``, in order.

    Every tensor has heads on dim 1; one with all the query heads is sliced by the query
    heads, any other by the K/V heads.
    """
    q_heads = groups[-1][0].stop
    for hq, hkv in groups:
        def part(t: torch.Tensor) -> torch.Tensor:
            return t[:, hq] if t.shape[1] == q_heads else t[:, hkv]

        _copy_into([part(t) for t in results], fn(*map(part, tensors)))


def _copy_into(dsts: Sequence[torch.Tensor], srcs: Sequence[torch.Tensor]) -> None:
    """A function of its own so that the pass's results die here, before the next pass."""
    for dst, src in zip(dsts, srcs, strict=True):
        dst.copy_(src)
