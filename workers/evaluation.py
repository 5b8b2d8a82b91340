"""Held-out evaluation during training: the loss and perplexity of the current weights.

Every ``EvalConfig.interval_steps`` steps, and after the last step, every rank runs its
share of the first ``samples`` held-out samples (``data.heldout``) forward, without
gradients and in eval mode, sharded as a training step is: the samples split over the
data-parallel ranks (``data.partition``, even), each sample's tokens over the sequence
ranks (``SequenceContext.shard``). Each rank sums the cross-entropy of its real target
tokens (not -100) in float64 and counts them; one all-reduce of ``[sum, count]`` gives
every rank the mean token cross-entropy over all samples, and ``perplexity = exp(loss)``.

The figure is a function of the weights and the held-out data only: the same at every
world size up to the order of float sums, and bit for bit the same after a restart at the
same world size (the samples are defined by their index, the kernels are deterministic).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from . import data as data_mod
from .batches import rank_batch, token_losses
from .config import WorkerConfig
from .mixers import SequenceContext
from .packing import IGNORE

#: Targets the loss ignores (a document's last token, padding).


@dataclasses.dataclass(frozen=True)
class Evaluation:
    """One evaluation: after ``step`` optimizer steps, over ``tokens`` held-out target tokens."""

    step: int
    loss: float
    tokens: int

    @property
    def perplexity(self) -> float:
        return math.exp(self.loss)

    def figures(self) -> dict[str, Any]:
        """What ``/status`` and the job's status carry: ``{step, loss, perplexity}``."""
        return {"step": self.step, "loss": self.loss, "perplexity": self.perplexity}

    def log_fields(self) -> dict[str, float]:
        """What the step log's line of ``step`` adds."""
        return {"evalLoss": self.loss, "evalPerplexity": self.perplexity}


class Evaluator:
    """A rank's held-out evaluation: which samples are its share, and when one is due."""

    def __init__(self, cfg: WorkerConfig, model: nn.Module, ctx: SequenceContext, dp_rank: int) -> None:
        if cfg.evaluation is None:
            raise ValueError("no evaluation configured")
        self.every, self.total = cfg.evaluation.interval_steps, cfg.optim.steps
        self.model, self.ctx, self.micro_batch = model, ctx, cfg.data.micro_batch
        self.data = data_mod.heldout(cfg.data, cfg.model.vocab_size)
        self.indices = share(cfg.evaluation.samples, dp_rank, cfg.parallel.data)

    def due(self, step: int) -> bool:
        return step % self.every == 0 or step == self.total

    def after(self, step: int) -> Evaluation | None:
        """The evaluation of the weights after ``step`` if one is due then (every rank
        calls this at every step: ranks meet in its all-reduce)."""
        return self.evaluate(step) if self.due(step) else None

    def evaluate(self, step: int) -> Evaluation:
        sums = local_sums(self.model, self.ctx, self.data, self.indices, self.micro_batch)
        if dist.is_initialized():
            dist.all_reduce(sums)
        total, count = sums.tolist()
        if count == 0:
            raise ValueError("the held-out samples have no target tokens to evaluate")
        return Evaluation(step=step, loss=total / count, tokens=int(count))


def share(samples: int, dp_rank: int, dp: int) -> range:
    """The held-out sample indices data-parallel rank ``dp_rank`` of ``dp`` evaluates."""
    counts = data_mod.partition(samples, None, dp)
    start = sum(counts[:dp_rank])
    return range(start, start + counts[dp_rank])


def local_sums(model: nn.Module, ctx: SequenceContext, data, indices: range, micro_batch: int) -> torch.Tensor:
    """``[sum of token cross-entropy, target tokens]`` (float64) of this rank's tokens of
    the samples ``indices``, in eval mode and without gradients."""
    sums = torch.zeros(2, dtype=torch.float64)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for start in range(indices.start, indices.stop, micro_batch):
                batch = rank_batch(data_mod.collate(data, range(start, min(start + micro_batch, indices.stop))), ctx)
                logits = model(batch.inputs, batch.positions, batch.segments)
                losses = token_losses(logits, batch.targets, reduction="none")
                real = batch.targets.flatten() != IGNORE
                sums[0] += losses[real].double().sum()
                sums[1] += real.sum()
    finally:
        model.train(was_training)
    return sums
