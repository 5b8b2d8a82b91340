"""Document masks for packed sequences: a query attends only keys of its own document.

A packed sample holds several documents back to back; ``segments`` (int64 ``[B, n]``,
this rank's tokens in the same layout as ``q``) gives each token's document id, ids
non-decreasing along the full sequence, a document being a run of equal ids. The kernels
need the ids of the *keys* where each block is computed, which may live on another rank,
so :func:`gather_ids` all-gathers every rank's ids once per call (``8 B n`` bytes to each
peer, kept for the backward) instead of moving them with every block and head pass.

:class:`DocumentBlocks` turns the blocks of the schedule into masks of allowed (query,
key) pairs, or ``None`` when no pair is allowed, so the kernels skip them (no compute,
and for TokenRing no partial sent).
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from .. import comm
from . import schedule
from .blocks import BlockMask
from .layout import gather_sequence, shard_of

__all__ = ["check_segments", "gather_ids", "DocumentBlocks", "relation", "block_mask",
           "kernel_mask"]


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


def relation(q_ids: torch.Tensor, kv_ids: torch.Tensor) -> str:
    """``"all"`` when in every sample the queries (ids ``[B, Lq]``) and keys (``[B, Lk]``)
    lie in one document, ``"none"`` when no sample has a document among both, else
    ``"some"``: decided from the ids alone, without an ``Lq x Lk`` mask.

    Example:
        >>> relation(torch.tensor([[0, 0]]), torch.tensor([[0, 1]]))
        'some'
    """
    first = q_ids[:, :1]
    if bool(((q_ids == first).all(1) & (kv_ids == first).all(1)).all()):
        return "all"
    shared = any(bool(torch.isin(q, kv).any()) for q, kv in zip(q_ids, kv_ids))
    return "some" if shared else "none"


def block_mask(q_ids: torch.Tensor, kv_ids: torch.Tensor) -> torch.Tensor:
    """Pairs of one document ``[B, 1, Lq, Lk]`` (bool) of queries with ids ``q_ids [B, Lq]``
    and keys ``kv_ids [B, Lk]``. Causality stays with the block (the fused kernels apply
    it on top and then skip the tiles above the diagonal).

    Example:
        >>> ids = torch.tensor([[0, 0, 1]])
        >>> block_mask(ids, ids)[0, 0].int().tolist()
        [[1, 1, 0], [1, 1, 0], [0, 0, 1]]
    """
    return q_ids[:, None, :, None] == kv_ids[:, None, None, :]


class DocumentBlocks:
    """The blocks of one call, :func:`.schedule.block` narrowed by the documents.

    ``blocks(q_rank, kv_rank)`` is ``(block, mask)``, or ``None`` when no pair is allowed;
    the mask (a :class:`.blocks.BlockMask`) is ``None`` without ``ids`` or where every
    pair of the block is allowed (the plain kernel then runs). Each block is decided and
    its mask built once per call, for all head passes. With ``crop`` a block shrinks to
    the rows and columns that hold an allowed pair in some sample (e.g. the one document
    crossing from one shard into the next): the others would give only rows without keys
    and zero gradients.

    A causal block is a shard against itself, so every query keeps its own position there
    (and such a block is never cropped); rows without a key of their document only occur
    in non-causal blocks.
    """

    def __init__(self, layout: str, causal: bool, n: int, ids: torch.Tensor | None,
                 dtype: torch.dtype, *, crop: bool = False) -> None:
        self.layout, self.causal, self.n, self.ids, self.dtype = layout, causal, n, ids, dtype
        self.crop = crop
        self._memo: dict[tuple[int, int], tuple[schedule.Block, BlockMask | None] | None] = {}

    def __call__(
        self, q_rank: int, kv_rank: int
    ) -> tuple[schedule.Block, BlockMask | None] | None:
        key = (q_rank, kv_rank)
        if key not in self._memo:
            self._memo[key] = self._decide(q_rank, kv_rank)
        return self._memo[key]

    def empty(self, q_rank: int, kv_rank: int) -> bool:
        """Whether the block holds no allowed pair (decided without building its mask)."""
        blk = schedule.block(self.layout, self.causal, q_rank, kv_rank, self.n)
        return blk is None or (self.ids is not None
                               and relation(*self._ids(blk, q_rank, kv_rank)) == "none")

    def _ids(self, blk, q_rank, kv_rank):
        return self.ids[q_rank][:, blk.q], self.ids[kv_rank][:, blk.kv]

    def _decide(self, q_rank, kv_rank):
        blk = schedule.block(self.layout, self.causal, q_rank, kv_rank, self.n)
        if blk is None or self.ids is None:
            return None if blk is None else (blk, None)
        ids = self._ids(blk, q_rank, kv_rank)
        kind = relation(*ids)
        if kind != "some":
            return None if kind == "none" else (blk, None)
        allowed = block_mask(*ids)
        if self.crop:
            rows = _span(allowed.any(3).flatten(0, 1))
            cols = _span(allowed.any(2).flatten(0, 1))
            blk = schedule.Block(_within(blk.q, rows, self.n), _within(blk.kv, cols, self.n),
                                 blk.causal)
            allowed = allowed[:, :, rows, cols]
        return blk, BlockMask.of(allowed, self.dtype)


def kernel_mask(
    q_ids: torch.Tensor, kv_ids: torch.Tensor, dtype: torch.dtype
) -> BlockMask | None:
    """The kernels' form of :func:`block_mask`; ``None`` when every pair is allowed."""
    if relation(q_ids, kv_ids) == "all":
        return None
    return BlockMask.of(block_mask(q_ids, kv_ids), dtype)


def _span(used: torch.Tensor) -> slice:
    """First to last True of ``used [*, L]`` over every leading row."""
    hits = used.any(0).nonzero().flatten()
    return slice(int(hits[0]), int(hits[-1]) + 1)


def _within(outer: slice, inner: slice, n: int) -> slice:
    """``inner`` (relative to the positions ``outer`` picks of ``n``) as one slice of ``n``."""
    picked = range(n)[outer][inner]
    return slice(picked.start, picked.stop)
