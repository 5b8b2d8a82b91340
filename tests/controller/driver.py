"""Drives the pure reconcile core the way a handler loop would, with a fake clock.

``Driver.tick(at=..., ranks=..., ...)`` builds an ``Observed`` for that moment, calls
``reconcile`` with the status of the previous tick and keeps the new one.
"""

from __future__ import annotations

import dataclasses
import datetime
from typing import Any

from shardwright.operator.api import CheckpointRef, RankState, TrainingJobSpec, parse
from shardwright.operator.controller import (
    Event, JobRef, Observed, Progress, RankObservation, Result, StartGeneration, reconcile,
)
from shardwright.operator.planner import plan_uniform
from tests.support.manifests import edited

T0 = datetime.datetime(2025, 3, 1, 12, 0, 0, tzinfo=datetime.timezone.utc)
JOB = JobRef(name="tiny-train", namespace="ml", checkpoint_dir="/ckpt/tiny-train", object_generation=7)


def spec(**edits: Any) -> TrainingJobSpec:
    """The example's spec with ``{"failurePolicy.maxRestarts": 1}`` style edits."""
    return parse(edited({f"spec.{k}": v for k, v in edits.items()})).spec


def ranks(generation: int, *states: RankState, **fields: Any) -> tuple[RankObservation, ...]:
    return tuple(RankObservation(generation, i, s, **fields) for i, s in enumerate(states))


def running(generation: int, world: int = 2) -> tuple[RankObservation, ...]:
    return ranks(generation, *[RankState.RUNNING] * world)


def checkpoint(step: int) -> CheckpointRef:
    return CheckpointRef(step=step, uri=f"/ckpt/tiny-train/step-{step:08d}", world_size=2, layout="dp=2,sp=1")


class Driver:
    def __init__(self, job_spec: TrainingJobSpec | None = None) -> None:
        self.spec = job_spec or spec()
        self.plan = plan_uniform(self.spec)
        self.job = JOB
        self.status = None
        self.history: list[Result] = []

    def tick(
        self,
        at: float = 0,
        ranks: tuple[RankObservation, ...] = (),
        progress: Progress | None = None,
        checkpoints: tuple[CheckpointRef, ...] = (),
        stale_placement: dict[int, str] | None = None,
    ) -> Result:
        seen = Observed(T0 + datetime.timedelta(seconds=at), ranks, progress, checkpoints, stale_placement or {})
        result = reconcile(self.job, self.spec, self.plan, self.status, seen)
        self.status = result.status
        self.history.append(result)
        return result

    def start(self) -> Result:
        """First tick, then the ranks of generation 1 come up: phase Running."""
        self.tick()
        return self.tick(1, running(1))

    def edit(self, **edits: Any) -> None:
        """The user changed the spec: ``metadata.generation`` goes up by one."""
        self.spec = spec(**edits)
        self.plan = plan_uniform(self.spec)
        self.job = dataclasses.replace(self.job, object_generation=self.job.object_generation + 1)

    def starts(self) -> list[StartGeneration]:
        return [a for r in self.history for a in r.of_type(StartGeneration)]


def reasons(result: Result) -> list[str]:
    return [str(e.reason) for e in result.of_type(Event)]


def condition(status, type_: str):
    (cond,) = [c for c in status.conditions if c.type == type_]
    return cond
