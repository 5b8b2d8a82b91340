"""Documents packed into samples of ``seq_len + 1`` tokens, boundaries kept (docs/data.md).

Documents are taken in one fixed order drawn from the seed and placed greedily (next fit):
a document that does not fit in the sample's remaining room starts the next sample, and
the room left behind is padding. A document longer than a sample is first cut into pieces
of one sample each (the last one shorter); every piece is a document of its own, and a
piece of a single token, which predicts nothing, is left out. Each
sample carries the shared document interface: ``segments`` (document ids, non-decreasing,
padding a run of its own), ``positions`` (0 at each document's first token) and targets
of -100 where nothing is predicted (a document's last token, padding).

The packing depends only on the documents, ``seq_len`` and the seed, so sample ``i`` is
the same at every world size and after every restart. Past the last sample the stream
goes on with the same samples in an order drawn from ``(seed, epoch)``.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import numpy as np
import torch

#: Target of a position nothing is predicted at (``F.cross_entropy``'s ignore_index).
IGNORE = -100
#: Token id written into padding; it is never attended to by a document nor predicted.
PAD = 0


@dataclasses.dataclass(frozen=True)
class Documents:
    """Token documents stored in a few flat arrays: document ``d`` is
    ``chunks[chunk[d]][start[d] : start[d] + length[d]]``."""

    chunks: tuple[np.ndarray, ...]
    chunk: np.ndarray
    start: np.ndarray
    length: np.ndarray

    def __len__(self) -> int:
        return len(self.length)

    def tokens(self, d: int) -> np.ndarray:
        s = int(self.start[d])
        return self.chunks[int(self.chunk[d])][s : s + int(self.length[d])]

    def subset(self, keep: np.ndarray) -> Documents:
        """The documents whose indices are ``keep``, in that order."""
        return Documents(self.chunks, self.chunk[keep], self.start[keep], self.length[keep])


def held_out(count: int, fraction: float) -> np.ndarray:
    """Which of ``count`` documents the validation split holds: document ``k`` when
    ``splitmix64(k) / 2**64 < fraction``, a hash of its index alone (not of the seed)."""
    with np.errstate(over="ignore"):
        z = np.arange(count, dtype=np.uint64) + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z ^= z >> np.uint64(31)
    return z < np.uint64(min(fraction, 1.0) * 2.0**64) if fraction < 1 else np.ones(count, dtype=bool)


class Row(NamedTuple):
    """One sample's ``[seq_len]`` tensors, in :class:`workers.data.Batch`'s field order."""

    inputs: torch.Tensor
    targets: torch.Tensor
    positions: torch.Tensor
    segments: torch.Tensor


def layout(lengths: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Next-fit packing of documents of ``lengths`` (in that order) into samples of ``size``.

    Returns ``(doc, offset, length, first)``: piece ``p`` is ``length[p]`` tokens of document
    ``doc[p]`` from ``offset[p]``; sample ``j`` holds pieces ``first[j]:first[j + 1]``.
    """
    counts = -(-lengths // size)  # pieces per document
    doc = np.repeat(np.arange(len(lengths)), counts)
    within = np.arange(len(doc)) - np.repeat(np.cumsum(counts) - counts, counts)
    offset = within * size
    length = np.minimum(lengths[doc] - offset, size)
    keep = length > 1  # a lone token predicts nothing: such a piece would be padding in disguise
    doc, offset, length = doc[keep], offset[keep], length[keep]
    first, fill = [0], 0
    for p, n in enumerate(length.tolist()):
        if fill + n > size:
            first.append(p)
            fill = 0
        fill += n
    first.append(len(length))
    return doc, offset, length, np.asarray(first, dtype=np.int64)


class Packed:
    """Samples ``i = 0, 1, ...`` of ``docs`` packed for ``seq_len`` (see the module docstring)."""

    def __init__(self, docs: Documents, seq_len: int, seed: int, *, what: str) -> None:
        self.docs, self.seq_len, self.seed = docs, seq_len, seed
        total = int(docs.length.sum())
        if total < seq_len + 1:
            held = f"{len(docs)} documents hold" if len(docs) != 1 else "1 document holds"
            raise ValueError(f"{what}: {held} {total} tokens; "
                             f"seqLen {seq_len} needs at least {seq_len + 1}")
        order = np.random.default_rng(seed).permutation(len(docs))
        doc, self.offset, self.length, self.first = layout(docs.length[order], seq_len + 1)
        self.doc = order[doc]
        #: Distinct samples; sample ``i`` repeats sample ``i - size`` in another order.
        self.size = len(self.first) - 1
        if not len(self.length):
            raise ValueError(f"{what}: no document holds more than one token: nothing to predict")
        self._order: tuple[int, np.ndarray] | None = None  # the last epoch's sample order

    def __getitem__(self, index: int) -> Row:
        epoch, j = divmod(index, self.size)
        if epoch:
            if self._order is None or self._order[0] != epoch:
                self._order = (epoch, np.random.default_rng((self.seed, epoch)).permutation(self.size))
            j = int(self._order[1][j])
        size = self.seq_len + 1
        tokens = np.full(size, PAD, dtype=np.int64)
        segments = np.empty(size, dtype=np.int64)
        positions = np.zeros(size, dtype=np.int64)
        last = np.zeros(size, dtype=bool)  # nothing to predict from here: end of a document, padding
        fill = 0
        for s, p in enumerate(range(self.first[j], self.first[j + 1])):
            n, at = int(self.length[p]), int(self.offset[p])
            tokens[fill : fill + n] = self.docs.tokens(int(self.doc[p]))[at : at + n]
            segments[fill : fill + n] = s
            positions[fill : fill + n] = np.arange(n)
            last[fill + n - 1] = True
            fill += n
        segments[fill:] = self.first[j + 1] - self.first[j]
        positions[fill:] = np.arange(size - fill)
        last[fill:] = True
        targets = np.where(last[:-1], IGNORE, tokens[1:])
        return Row(*(torch.from_numpy(a) for a in (tokens[:-1], targets, positions[:-1], segments[:-1])))
