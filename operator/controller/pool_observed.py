"""What the pool core is told about a ServingPool's replicas, and what it remembers between passes.

The backend fills ``PoolObserved`` from its processes (or pods) and the router's view; the
core never looks itself. ``PoolMemory`` is the core's own small state (the autoscaler's
recent recommendations, the last busy moment, the next replica number): the caller keeps it
between passes and hands it back, so the core stays a pure function.
"""

from __future__ import annotations

import dataclasses
import datetime

from shardwright.operator.api.servingpool import ReplicaState


@dataclasses.dataclass(frozen=True)
class ReplicaObservation:
    name: str
    index: int
    #: The spec revision (``pool.revision``) it was started with.
    revision: str
    state: ReplicaState
    #: When it entered ``state`` (started, became ready, began draining, exited).
    since: datetime.datetime
    #: The backend has been asked to drain or stop it (an exit is then expected).
    stopping: bool = False
    #: The router knows it (``RegisterReplica`` was carried out).
    registered: bool = False
    #: The router sends it requests: registered, probed serving, not routed away.
    routable: bool = False
    routed_away: bool = False
    exit_code: int | None = None
    waiting: int = 0
    running: int = 0
    ttft_p50: float | None = None
    ttft_p99: float | None = None
    tpot_p50: float | None = None
    tpot_p99: float | None = None
    tokens_per_second: float | None = None

    @property
    def alive(self) -> bool:
        return self.state is not ReplicaState.EXITED

    @property
    def in_service(self) -> bool:
        """Counts toward the pool's size: alive, not leaving."""
        return self.alive and not self.stopping and not self.routed_away

    @property
    def load(self) -> int:
        return self.waiting + self.running


@dataclasses.dataclass(frozen=True)
class PoolObserved:
    now: datetime.datetime
    replicas: tuple[ReplicaObservation, ...] = ()
    #: Requests the router holds because no replica is routable (a pool at zero wakes up).
    held_requests: int = 0
    #: The router's URL, for status.endpoint.
    endpoint: str | None = None

    def named(self, name: str) -> ReplicaObservation | None:
        return next((r for r in self.replicas if r.name == name), None)


@dataclasses.dataclass(frozen=True)
class PoolMemory:
    #: The autoscaler's recommendations of the last stabilisation window: (when, replicas).
    recommendations: tuple[tuple[datetime.datetime, int], ...] = ()
    #: The replica count the autoscaler settled on (None before its first pass).
    desired: int | None = None
    #: Last moment a request was waiting, running or held (idle-to-zero counts from here).
    last_busy: datetime.datetime | None = None
    #: Number of the next replica started (names are ``<pool>-<n>``, never reused).
    next_index: int = 0
    #: A rollout is under way (replicas of another revision are alive).
    rolling: bool = False
