"""Which part of a (query shard, key/value shard) pair a rank computes, and what it costs.

The ring kernels visit every pair ``(q of rank r, k/v of rank s)`` once. With causal
masking some pairs are empty and some only partly visible; :func:`block` is the single
place that decides, for both layouts, and the kernels execute exactly what it returns.
:func:`work_per_rank` sums the same decisions into unmasked query-key pairs per rank (an
analytic FLOP count: each pair costs ``4 D`` forward FLOPs), so load-balance claims are
checked on the schedule the kernels run.

Per pair, with ``n`` local positions (zigzag: two chunks of ``n/2``):

================  ==========================  =========================================
layout            ``s == r``                  ``s != r`` (causal; non-causal: all x all)
================  ==========================  =========================================
contiguous        all x all, causal           ``s < r``: all x all; ``s > r``: nothing
zigzag            all x all, causal           ``s < r``: all q x first k/v chunk;
                                              ``s > r``: second q chunk x all k/v
================  ==========================  =========================================
"""

from __future__ import annotations

from typing import NamedTuple

from .layout import check_layout

__all__ = ["Block", "block", "work_per_rank"]


class Block(NamedTuple):
    """Rows of the query shard and of the key/value shard to attend, and the mask."""

    q: slice
    kv: slice
    causal: bool

    def pairs(self, n: int) -> int:
        """Unmasked query-key pairs of this block for shards of length ``n``."""
        rows = len(range(n)[self.q])
        cols = len(range(n)[self.kv])
        return rows * (rows + 1) // 2 if self.causal else rows * cols


_ALL = slice(None)


def block(layout: str, causal: bool, q_rank: int, kv_rank: int, n: int) -> Block | None:
    """The block that queries of ``q_rank`` attend in the keys of ``kv_rank``; None if empty.

    Example:
        >>> block("zigzag", True, q_rank=1, kv_rank=0, n=8)
        Block(q=slice(None, None, None), kv=slice(0, 4, None), causal=False)
    """
    check_layout(layout)
    if not causal:
        return Block(_ALL, _ALL, False)
    if q_rank == kv_rank:
        return Block(_ALL, _ALL, True)
    if layout == "contiguous":
        return Block(_ALL, _ALL, False) if kv_rank < q_rank else None
    half = n // 2
    if kv_rank < q_rank:
        return Block(_ALL, slice(0, half), False)
    return Block(slice(half, n), _ALL, False)


def work_per_rank(layout: str, causal: bool, size: int, n: int) -> list[int]:
    """Unmasked query-key pairs each ring rank computes (queries stay, k/v travel).

    Example:
        >>> work_per_rank("contiguous", True, size=2, n=4)
        [10, 26]
    """
    work = []
    for rank in range(size):
        blocks = (block(layout, causal, rank, source, n) for source in range(size))
        work.append(sum(b.pairs(n) for b in blocks if b is not None))
    return work
