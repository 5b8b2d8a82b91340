"""What the controller asks a backend to do, as values."""

from __future__ import annotations

import dataclasses
from typing import TypeVar

from shardwright.operator.api import EventType, Reason, TrainingJobStatus
from shardwright.operator.planner import Plan
from shardwright.workers.config import WorkerConfig


@dataclasses.dataclass(frozen=True)
class StartGeneration:
    """Start every rank of ``generation`` (gang: all of them, or none)."""

    generation: int
    plan: Plan
    config: WorkerConfig


@dataclasses.dataclass(frozen=True)
class StopGeneration:
    """Stop the ranks of ``generation``.

    ``graceful``: ask them to write a checkpoint at the next step boundary and exit (suspend,
    Ctrl-C); otherwise end them now (the generation already failed).
    """

    generation: int
    graceful: bool
    reason: Reason


@dataclasses.dataclass(frozen=True)
class SetShares:
    """Give the data-parallel ranks of ``generation`` new work shares at a step boundary
    (rank 0's ``POST /control``; every rank switches at the same step). Idempotent: the
    controller repeats it until rank 0 reports the shares in effect."""

    generation: int
    shares: tuple[float, ...]


@dataclasses.dataclass(frozen=True)
class ReplaceRank:
    """The generation ends without ``rank``: the backend keeps the next one off its host
    (locally: one rank fewer in the budget when the job is elastic; on Kubernetes: avoid,
    or cordon, ``node``). A graceful ``StopGeneration`` comes with it."""

    generation: int
    rank: int
    node: str | None


@dataclasses.dataclass(frozen=True)
class Event:
    type: EventType
    #: A ``Reason``, or a platform's own CamelCase cause (OOMKilled, ImagePullBackOff, ...).
    reason: str
    message: str


Action = StartGeneration | StopGeneration | SetShares | ReplaceRank | Event
_A = TypeVar("_A")


@dataclasses.dataclass(frozen=True)
class Result:
    actions: tuple[Action, ...]
    status: TrainingJobStatus
    #: Seconds until the controller wants to look again regardless of events (backoff).
    requeue_after: float | None = None

    def of_type(self, kind: type[_A]) -> list[_A]:
        return [a for a in self.actions if isinstance(a, kind)]
