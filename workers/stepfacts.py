"""The step facts: what every rank learns of each finished step, in one small all-reduce.

A batch of finished steps travels in one float64 all-reduce on its own gloo group, so it
overlaps the next step's gradient all-reduce: whether any rank was asked to stop, new work
shares rank 0 received from the controller, and per step the global loss and every rank's
step time, section times and busy time. Each rank fills only its own slots (shares: rank 0
only), so the sum is a gather. Layout:
``[stop, switch, shares[D], (loss, seconds[W], (sections[S], busy)[W])[K]]``.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
from collections.abc import Sequence

import torch
import torch.distributed as dist

from .evaluation import Evaluation
from .timing import SECTIONS

#: Step facts travel in one all-reduce per about this many seconds of training: steps of a
#: few milliseconds share one (on 2 CPU cores one per step cost 8% of throughput), a step
#: of this length or more has its own.
FACTS_INTERVAL_S = 0.05
#: Most steps one facts all-reduce carries (a stop request waits at most twice this).
MAX_FACTS_BATCH = 8


@dataclasses.dataclass
class StepFacts:
    """A finished step as this rank saw it, until every rank's facts of it are back."""

    number: int
    seconds: float
    samples: list[int]
    loss_sum: float
    #: This rank's section seconds (``SECTIONS``) and busy seconds.
    sections: list[float]
    #: Target tokens of the global batch that are not ``IGNORE``: the loss's divisor and
    #: the tokens counted in tokens/s.
    targets: int = 0
    stall: float | None = None  # the checkpoint save after it blocked this long
    ended: float = 0.0  # monotonic, for the throughput window
    ended_wall: float = 0.0  # wall clock, for the step log
    evaluation: Evaluation | None = None  # the held-out evaluation after it, if one was due


@dataclasses.dataclass
class SentFacts:
    """Steps whose facts all-reduce is in flight; read them once :meth:`wait` returned."""

    steps: list[StepFacts]
    facts: torch.Tensor
    work: dist.Work
    world: int
    data: int  # data-parallel degree: the number of shares

    def wait(self) -> None:
        self.work.wait()

    def stop_requested(self) -> bool:
        return bool(self.facts[0] > 0)

    def shares(self) -> tuple[float, ...] | None:
        """New work shares, if rank 0 sent some."""
        return tuple(self.facts[2 : 2 + self.data].tolist()) if self.facts[1] > 0 else None

    def rows(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return _rows(self.facts, len(self.steps), self.world, self.data)

    def last_loss(self) -> float:
        """The global loss of the batch's last step (waits for the facts)."""
        self.wait()
        return self.rows()[0][-1].item() / self.steps[-1].targets


def send(steps: list[StepFacts], *, rank: int, world: int, data: int, stop: bool,
         shares: Sequence[float] | None, group: dist.ProcessGroup) -> SentFacts:
    """Start the all-reduce of a batch of this rank's ``steps``; ``shares`` only from rank 0
    (ignored unless there is one positive share per data-parallel rank)."""
    facts = torch.zeros(2 + data + len(steps) * (1 + world * (2 + len(SECTIONS))), dtype=torch.float64)
    facts[0] = float(stop)
    if shares is not None and len(shares) == data and min(shares) > 0:
        facts[1] = 1.0
        facts[2 : 2 + data] = torch.tensor(shares, dtype=torch.float64)
    loss, seconds, sections = _rows(facts, len(steps), world, data)
    loss[:] = torch.tensor([s.loss_sum for s in steps], dtype=torch.float64)
    seconds[:, rank] = torch.tensor([s.seconds for s in steps], dtype=torch.float64)
    sections[:, rank] = torch.tensor([s.sections for s in steps], dtype=torch.float64)
    return SentFacts(steps, facts, dist.all_reduce(facts, group=group, async_op=True), world, data)


def _rows(facts: torch.Tensor, steps: int, world: int, data: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Views of a facts tensor's per-step part: loss ``[K]``, step seconds ``[K, W]``,
    sections and busy ``[K, W, S + 1]``."""
    rows = facts[2 + data :].view(steps, -1)
    return rows[:, 0], rows[:, 1 : 1 + world], rows[:, 1 + world :].view(steps, world, len(SECTIONS) + 1)


def facts_batch(step_seconds: list[float]) -> int:
    """Steps the next facts all-reduce carries: about ``FACTS_INTERVAL_S`` of steps at the
    median step time of the batch just back (every rank holds the same sums, so every rank
    picks the same number)."""
    median = statistics.median(step_seconds)
    return max(1, min(MAX_FACTS_BATCH, math.ceil(FACTS_INTERVAL_S / max(median, 1e-9))))
