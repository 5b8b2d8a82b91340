"""What a backend saw, as plain values: the controller's only input besides the spec."""

from __future__ import annotations

import dataclasses
import datetime

from shardwright.operator.api import CheckpointRef, RankState
from shardwright.operator.api.trainingjobstatus import EvaluationResult


@dataclasses.dataclass(frozen=True)
class RankObservation:
    generation: int
    rank: int
    state: RankState
    exit_code: int | None = None
    message: str = ""
    node: str | None = None
    #: What the rank reported last: ``computing``, ``syncing`` (in a collective), ``hung``.
    activity: str | None = None
    #: CamelCase cause as the platform names it (OOMKilled, Evicted, NodeLost,
    #: ImagePullBackOff, Unschedulable, PodsReadyTimeout); conditions and events use it.
    reason: str | None = None
    #: The process ended from outside (killed, OOM-killed, evicted, its host lost) rather
    #: than by raising: when ranks fail together, such a rank is the cause and the others,
    #: whose collectives broke within milliseconds, its victims.
    died: bool = False
    #: The platform took the rank away on purpose (eviction, preemption, a node drain or
    #: shutdown), or is taking it (the pod still runs): the job restarts without spending
    #: its restart budget.
    disrupted: bool = False
    #: Its node is NotReady or gone: whatever the rank does not do (report steps, end) is
    #: its node's doing, so a progress deadline that passes meanwhile is a disruption too.
    node_lost: bool = False

    @property
    def alive(self) -> bool:
        return self.state in (RankState.PENDING, RankState.RUNNING)


@dataclasses.dataclass(frozen=True)
class StepTiming:
    """One step's section times of every rank, by rank (rank 0 keeps the recent ones)."""

    step: int
    #: Seconds of the rank's own work: data, forward, backward, optimizer.
    compute: tuple[float, ...]
    #: Seconds the rank was blocked on its peers (gradient and step-facts all-reduces).
    wait: tuple[float, ...]
    #: Samples the rank trained on in that step (its work share).
    samples: tuple[int, ...]
    #: CPU (on GPU: device) seconds of the compute, blind to time the host scheduler gave
    #: the core to others; empty when the rank does not report it.
    busy: tuple[float, ...] = ()


@dataclasses.dataclass(frozen=True)
class Progress:
    """Rank 0's ``/status`` of the current generation."""

    generation: int
    step: int
    loss: float | None = None
    tokens_per_second: float | None = None
    #: Last step time of every rank, by rank.
    step_seconds: tuple[float, ...] = ()
    #: Step of the checkpoint this generation loaded, if any.
    resumed_from: int | None = None
    #: Damaged checkpoints the loader skipped: (step, what is wrong).
    rejected: tuple[tuple[int, str], ...] = ()
    #: Every rank's section times over the last steps, oldest first.
    timings: tuple[StepTiming, ...] = ()
    #: Work shares of the data-parallel ranks in effect (None: even).
    data_shares: tuple[float, ...] | None = None
    #: The generation's last held-out evaluation (spec.evaluation), if it made one yet.
    evaluation: EvaluationResult | None = None


@dataclasses.dataclass(frozen=True)
class Observed:
    now: datetime.datetime
    ranks: tuple[RankObservation, ...] = ()
    progress: Progress | None = None
    #: Committed checkpoints, oldest first.
    checkpoints: tuple[CheckpointRef, ...] = ()
    #: Generation -> why some of its ranks wait for a placement that no longer holds (their
    #: pods keep off a node the job has since readmitted); such a generation starts again.
    stale_placement: dict[int, str] = dataclasses.field(default_factory=dict)
    #: Why no generation may start yet though none of this job runs (children of an earlier
    #: job of the same name still being deleted); empty: nothing holds a start back.
    blocked: str = ""

    def of_generation(self, generation: int) -> tuple[RankObservation, ...]:
        return tuple(r for r in self.ranks if r.generation == generation)

    def alive_elsewhere(self, generation: int) -> tuple[RankObservation, ...]:
        """Live ranks of any other generation: stale, to be stopped before a new start."""
        return tuple(r for r in self.ranks if r.generation != generation and r.alive)

    @property
    def latest_checkpoint(self) -> CheckpointRef | None:
        return self.checkpoints[-1] if self.checkpoints else None


def rfc3339(moment: datetime.datetime) -> str:
    return moment.astimezone(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(text: str) -> datetime.datetime:
    return datetime.datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=datetime.timezone.utc)
