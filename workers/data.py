"""Samples defined by their global index, so every world size sees the same global batches.

Step ``s`` trains on samples ``[s * B, (s + 1) * B)`` where ``B`` is the global batch.
Those are split into contiguous per-rank slices (even, or by work shares when a slow rank
is relieved), and each slice into micro-batches. Resuming at step ``s`` therefore
continues the stream at exactly sample ``s * B``, whatever the new world size.
"""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path

import numpy as np
import torch

from .config import DataConfig
from .datafiles import DataError
from .packing import Documents, Packed, held_out
from .textdata import model_eos, tokenized
from .tokenshards import shards

#: Successors each token may have in the synthetic Markov chain (entropy ln 4 per token).
BRANCHING = 4


class MarkovCopy:
    """First half: a walk on a fixed sparse Markov chain; second half: the first half again.

    The loss falls quickly as the model learns the chain's transitions (from ln V to about
    ln 4 on the first half) and further as it learns to copy (towards 0 on the second half).
    """

    def __init__(self, vocab_size: int, seq_len: int, seed: int, first_index: int = 0) -> None:
        if vocab_size < BRANCHING:
            raise ValueError(f"markov-copy needs a vocabulary of at least {BRANCHING} tokens")
        self.seq_len, self.seed, self.first_index = seq_len, seed, first_index
        g = torch.Generator().manual_seed(seed)
        self.successors = torch.stack(
            [torch.randperm(vocab_size, generator=g)[:BRANCHING] for _ in range(vocab_size)]
        ).tolist()
        self.vocab_size = vocab_size

    def __getitem__(self, index: int) -> torch.Tensor:
        """Sample ``index``: ``seq_len + 1`` tokens (inputs and shifted targets)."""
        rng = np.random.default_rng((self.seed, self.first_index + index))
        length = self.seq_len + 1
        half = (length + 1) // 2
        walk = [int(rng.integers(self.vocab_size))]
        for choice in rng.integers(BRANCHING, size=half - 1):
            walk.append(self.successors[walk[-1]][choice])
        return torch.tensor((walk + walk)[:length], dtype=torch.long)


class TokenFile:
    """Windows of ``seq_len + 1`` tokens from a flat token file (``.npy``, or raw ``.bin``)."""

    def __init__(self, path: str, seq_len: int, seed: int) -> None:
        p = Path(path)
        self.tokens = np.load(p, mmap_mode="r") if p.suffix == ".npy" else np.memmap(p, dtype=np.uint16, mode="r")
        self.seq_len = seq_len
        self.windows = (len(self.tokens) - 1) // seq_len
        if self.windows < 1:
            raise ValueError(f"{path} holds {len(self.tokens)} tokens; seqLen {seq_len} needs more")
        self.order = np.random.default_rng(seed).permutation(self.windows)

    def __getitem__(self, index: int) -> torch.Tensor:
        start = int(self.order[index % self.windows]) * self.seq_len
        return torch.from_numpy(np.asarray(self.tokens[start : start + self.seq_len + 1], dtype=np.int64))


#: First sample index of the synthetic held-out stream: no training run gets that far.
HELDOUT_FIRST_INDEX = 1 << 62

Dataset = MarkovCopy | TokenFile | Packed


def dataset(cfg: DataConfig, vocab_size: int) -> Dataset:
    """The training samples of ``spec.data``."""
    if cfg.source == "file":
        return TokenFile(cfg.path or "", cfg.seq_len, cfg.seed)
    if cfg.source in ("text", "tokens"):
        docs = _documents(cfg, cfg.path or "", "spec.data.path")
        if cfg.validation_fraction and not cfg.validation_path:
            docs = docs.subset(np.flatnonzero(~held_out(len(docs), cfg.validation_fraction)))
        return Packed(docs, cfg.seq_len, cfg.seed, what="spec.data.path")
    return MarkovCopy(vocab_size, cfg.seq_len, cfg.seed)


def heldout(cfg: DataConfig, vocab_size: int) -> Dataset:
    """The validation samples: ``spec.data.validation``'s path or held-out documents; for
    synthetic data the same chain, at sample indices training never reaches."""
    field = "spec.data.validation.path"
    if cfg.source == "synthetic":
        return MarkovCopy(vocab_size, cfg.seq_len, cfg.seed, first_index=HELDOUT_FIRST_INDEX)
    if cfg.source == "file" and cfg.validation_path:
        return TokenFile(cfg.validation_path, cfg.seq_len, cfg.seed)
    if cfg.validation_path:
        return Packed(_documents(cfg, cfg.validation_path, field), cfg.seq_len, cfg.seed, what=field)
    if cfg.source != "file" and cfg.validation_fraction:
        docs = _documents(cfg, cfg.path or "", "spec.data.path")
        held = docs.subset(np.flatnonzero(held_out(len(docs), cfg.validation_fraction)))
        return Packed(held, cfg.seq_len, cfg.seed, what="spec.data.validation.fraction")
    raise DataError("spec.data.validation", f"source {cfg.source} has no held-out split: set validation.path"
                    + ("" if cfg.source == "file" else " or validation.fraction"))


def _documents(cfg: DataConfig, path: str, field: str) -> Documents:
    if cfg.source == "text":
        if not cfg.tokenizer:
            raise DataError("spec.data.source", "text is tokenized with the model's tokenizer: set spec.model.from")
        return tokenized(path, cfg.field, cfg.tokenizer, field)
    return shards(path, cfg.dtype, model_eos(cfg.tokenizer) if cfg.tokenizer else None, field)


@functools.lru_cache(maxsize=64)
def partition(total: int, shares: tuple[float, ...] | None, parts: int) -> tuple[int, ...]:
    """Split ``total`` samples into ``parts`` counts proportional to ``shares`` (even if None).

    Largest-remainder rounding, ties to the lower index: deterministic, sums to ``total``,
    and every part gets at least one sample when ``total >= parts``. Cached: every step
    asks twice with the shares in effect, and one answer took about 0.2 ms of numpy, 2% of
    the tiny model's step on a 2-core host.
    """
    weights = np.asarray(shares if shares else [1.0] * parts, dtype=np.float64)
    exact = total * weights / weights.sum()
    counts = np.maximum(np.floor(exact).astype(int), 1 if total >= parts else 0)
    while counts.sum() > total:
        counts[int(np.argmax(counts - exact))] -= 1
    order = np.argsort(-(exact - counts), kind="stable")
    for i in order[: total - counts.sum()]:
        counts[i] += 1
    return tuple(counts.tolist())


@dataclasses.dataclass(frozen=True)
class Slice:
    """The samples one data-parallel rank trains on in one step, as micro-batches."""

    micro_batches: tuple[range, ...]

    @property
    def samples(self) -> int:
        return sum(len(r) for r in self.micro_batches)


def rank_slice(step: int, cfg: DataConfig, dp_rank: int, dp: int, shares: tuple[float, ...] | None) -> Slice:
    counts = partition(cfg.global_batch, shares, dp)
    start = step * cfg.global_batch + sum(counts[:dp_rank])
    stop = start + counts[dp_rank]
    return Slice(tuple(range(s, min(s + cfg.micro_batch, stop)) for s in range(start, stop, cfg.micro_batch)))


@dataclasses.dataclass(frozen=True)
class Batch:
    """``[b, seq_len]`` tensors of one micro-batch (docs/data.md).

    ``targets`` is -100 where no token is predicted (a document's last token, padding);
    ``positions`` restart at 0 at each document; ``segments`` holds document ids, None when
    every sample is one document (synthetic and file sources).
    """

    inputs: torch.Tensor
    targets: torch.Tensor
    positions: torch.Tensor
    segments: torch.Tensor | None = None

    def __iter__(self):
        """``inputs, targets``, for loops that read no documents (bench/plain_ddp.py)."""
        return iter((self.inputs, self.targets))


def collate(data: Dataset, indices: range) -> Batch:
    """The samples ``indices`` of ``data`` as one Batch."""
    if isinstance(data, Packed):
        return Batch(*(torch.stack(field) for field in zip(*(data[i] for i in indices))))
    batch = torch.stack([data[i] for i in indices])
    inputs, targets = batch[:, :-1], batch[:, 1:]
    positions = torch.arange(inputs.shape[1]).expand_as(inputs)
    return Batch(inputs, targets, positions)
