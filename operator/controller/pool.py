"""The pool core: (ServingPool spec, observed replicas, memory) -> actions, status, memory.

Pure, as the TrainingJob core: no I/O, no clock (``observed.now``), no Kopf, no torch. The
local backend (``shardwright serve``) and the Kubernetes backend carry out the actions.
One pass is an ordered list of small ``ensure`` steps:

1. exited replicas are forgotten (an exit nobody asked for is a ``ReplicaFailed`` event:
   the replica no longer counts, so step 5 starts its replacement);
2. ready replicas are registered with the router (routable once its probe finds them warm);
3. a drain that outlives ``drainTimeoutSeconds`` is ended;
4. the autoscaler (``pool_scaling``) gives the desired count;
5. scale and roll: start replicas of the current revision up to ``desired + maxSurge``
   replicas alive (leaving ones included: a drain still holds its GPU); retire old-revision
   replicas, and surplus ones on a scale-down, only while the *routable* count stays at
   ``desired - maxUnavailable`` or more; retiring is route away, then (next pass, once the
   router has let go) drain, then forget when the process exits;
6. status, computed afterwards from the same observation.

A replica's *revision* is a hash of what its process is built from (model and engine);
changing replicas, the router, autoscaling or the SLO rolls nothing.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json

from shardwright.operator.api import EventType
from shardwright.operator.api.servingpool import (
    POOL_LABEL,
    LatencyStatus,
    PoolConditionType,
    PoolPhase,
    PoolReason,
    ReplicaState,
    RoleName,
    RoleStatus,
    ServingPoolSpec,
    ServingPoolStatus,
)
from shardwright.workers.serve.config import ServeConfig
from shardwright.workers.serve.router.config import RouterConfig

from . import pool_scaling
from .actions import Event
from .conditions import set_condition
from .observed import rfc3339
from .pool_observed import PoolMemory, PoolObserved, ReplicaObservation

#: Seconds past ``drainTimeoutSeconds`` before a replica still draining is ended (it ends itself at the timeout).
DRAIN_GRACE_S = 10.0


@dataclasses.dataclass(frozen=True)
class PoolRef:
    name: str
    namespace: str = "default"
    #: metadata.generation, echoed into conditions' observedGeneration.
    object_generation: int | None = None


# ----------------------------------------------------------------------------- actions


@dataclasses.dataclass(frozen=True)
class StartReplica:
    name: str
    index: int
    revision: str
    config: ServeConfig


@dataclasses.dataclass(frozen=True)
class RegisterReplica:
    """Tell the router about a ready replica; it routes there once its own probe finds it serving."""

    name: str


@dataclasses.dataclass(frozen=True)
class RouteAway:
    """The router sends the replica nothing new (first step of a retirement)."""

    name: str


@dataclasses.dataclass(frozen=True)
class DrainReplica:
    """SIGTERM: finish the running requests within ``timeout_s``, then exit."""

    name: str
    timeout_s: float


@dataclasses.dataclass(frozen=True)
class StopReplica:
    """End the process now (it is not serving, or its drain ran out of time)."""

    name: str


@dataclasses.dataclass(frozen=True)
class ForgetReplica:
    """The process has exited: drop it from the router and the backend's table."""

    name: str


PoolAction = StartReplica | RegisterReplica | RouteAway | DrainReplica | StopReplica | ForgetReplica | Event


@dataclasses.dataclass(frozen=True)
class PoolResult:
    actions: tuple[PoolAction, ...]
    status: ServingPoolStatus
    memory: PoolMemory

    def of_type(self, kind: type) -> list:
        return [a for a in self.actions if isinstance(a, kind)]


# ----------------------------------------------------------------------------- rendering


def revision(spec: ServingPoolSpec) -> str:
    """What a replica process is built from; a change rolls the replicas."""
    parts = {"model": spec.model.model_dump(mode="json"), "engine": spec.engine.model_dump(mode="json")}
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:10]


def serve_config(ref: PoolRef, spec: ServingPoolSpec, index: int) -> ServeConfig:
    """One replica's ``ServeConfig`` (the backend fills in where it listens)."""
    return ServeConfig(
        pool=ref.name, namespace=ref.namespace, replica=index, model_name=spec.model.served_name or ref.name,
        model=spec.model.resolve(), checkpoint=spec.model.checkpoint, seed=spec.model.seed, dtype=spec.engine.dtype,
        engine=spec.engine.resolve(), drain_timeout_s=spec.rollout.drain_timeout_seconds,
    )


def router_config(ref: PoolRef, spec: ServingPoolSpec) -> RouterConfig:
    r = spec.router
    hold = spec.autoscaling.hold_seconds if spec.autoscaling else RouterConfig().hold_s
    return RouterConfig(
        model_name=spec.model.served_name or ref.name, vocab_size=spec.model.resolve().vocab_size, tokenizer=spec.model.from_,
        max_model_len=spec.engine.max_model_len, block_size=spec.engine.block_size, policy=str(r.policy),
        retries=r.retries, migrate_on_failure=r.migrate_on_failure, request_timeout_s=r.request_timeout_seconds, hold_s=hold,
    )


# ----------------------------------------------------------------------------- reconcile


def reconcile_pool(ref: PoolRef, spec: ServingPoolSpec, status: ServingPoolStatus | None, observed: PoolObserved,
                   memory: PoolMemory | None = None) -> PoolResult:
    return _Pass(ref, spec, status, observed, memory or PoolMemory()).run()


class _Pass:
    def __init__(self, ref, spec, status, observed, memory) -> None:
        self.ref: PoolRef = ref
        self.spec: ServingPoolSpec = spec
        self.status = status.model_copy(deep=True) if status else ServingPoolStatus()
        self.observed: PoolObserved = observed
        self.memory: PoolMemory = dataclasses.replace(memory, next_index=max([memory.next_index, *(r.index + 1 for r in observed.replicas)]))
        self.revision = revision(spec)
        self.actions: list[PoolAction] = []
        self.desired = spec.replicas

    def run(self) -> PoolResult:
        for step in (self.ensure_exited_forgotten, self.ensure_registered, self.ensure_drains_bounded, self.ensure_scaled, self.ensure_rolled):
            step()
        return PoolResult(tuple(self.actions), self.compute_status(), self.memory)

    # steps ---------------------------------------------------------------

    def ensure_exited_forgotten(self) -> None:
        for r in self.observed.replicas:
            if r.alive:
                continue
            self.actions.append(ForgetReplica(r.name))
            if not r.stopping:  # nobody asked it to go: a crash, an OOM kill, --inject kill
                self._event(EventType.WARNING, PoolReason.REPLICA_FAILED, f"replica {r.name} exited with code {r.exit_code}; a replacement starts")
            else:
                self._event(EventType.NORMAL, PoolReason.REPLICA_STOPPED, f"replica {r.name} stopped")

    def ensure_registered(self) -> None:
        for r in self.observed.replicas:
            if r.state is ReplicaState.READY and r.in_service and not r.registered:
                self.actions.append(RegisterReplica(r.name))
                self._event(EventType.NORMAL, PoolReason.REPLICA_READY, f"replica {r.name} is ready and registered with the router")

    def ensure_drains_bounded(self) -> None:
        limit = self.spec.rollout.drain_timeout_seconds + DRAIN_GRACE_S
        for r in self.observed.replicas:
            if r.state is ReplicaState.DRAINING and (self.observed.now - r.since).total_seconds() > limit:
                self.actions.append(StopReplica(r.name))
                self._event(EventType.WARNING, PoolReason.DRAIN_TIMEOUT, f"replica {r.name} still draining after {limit:g} s; stopped")

    def ensure_scaled(self) -> None:
        scale = pool_scaling.desired_replicas(self.spec, self.observed, self.memory)
        self.desired, self.memory = scale.replicas, scale.memory
        if scale.reason:
            up = scale.replicas > self._in_service_count()
            self._event(EventType.NORMAL, PoolReason.SCALED_UP if up else PoolReason.SCALED_DOWN, f"{scale.replicas} replicas: {scale.reason}")

    def ensure_rolled(self) -> None:
        rollout = self.spec.rollout
        replicas = self.observed.replicas
        serving = [r for r in replicas if r.in_service]
        leaving = [r for r in replicas if r.alive and not r.in_service]
        current = [r for r in serving if r.revision == self.revision]
        old = [r for r in serving if r.revision != self.revision]
        old_alive = any(r.alive and r.revision != self.revision for r in replicas)
        if old_alive and not self.memory.rolling:
            self._event(EventType.NORMAL, PoolReason.ROLLOUT_STARTED, f"replacing {len(old)} replica(s) with revision {self.revision}")
            self.memory = dataclasses.replace(self.memory, rolling=True)
        elif not old_alive and self.memory.rolling and sum(r.routable for r in current) >= self.desired:
            self._event(EventType.NORMAL, PoolReason.ROLLOUT_COMPLETE, f"every replica runs revision {self.revision}")
            self.memory = dataclasses.replace(self.memory, rolling=False)

        # Drain what the router has let go of (routed away on an earlier pass).
        for r in leaving:
            if r.routed_away and not r.stopping:
                self.actions.append(DrainReplica(r.name, rollout.drain_timeout_seconds))
                self._event(EventType.NORMAL, PoolReason.REPLICA_DRAINING, f"replica {r.name} drains (up to {rollout.drain_timeout_seconds:g} s)")

        # Start current-revision replicas: what the pool lacks, within desired + maxSurge alive.
        room = self.desired + rollout.max_surge - len(serving) - len(leaving)
        lacking = self.desired - len(current)
        if not old_alive:  # no rollout: make up the count even while surplus replicas drain
            room = max(room, self.desired - len(serving))
        for _ in range(max(0, min(room, lacking))):
            self._start()

        # Retire old replicas, then surplus ones, keeping desired - maxUnavailable routable.
        routable = sum(r.routable for r in serving)
        floor = self.desired - rollout.max_unavailable
        surplus = max(0, len(serving) - self.desired - (rollout.max_surge if old else 0))
        retire = [(r, True) for r in sorted(old, key=_retire_order)]
        if not old:
            retire = [(r, False) for r in sorted(current, key=_retire_order)][:surplus]
        for r, is_old in retire:
            if not r.routable:
                self.actions.append(StopReplica(r.name))  # not serving: nothing to drain
                continue
            if is_old and routable - 1 < floor:
                continue  # wait for a new one to become routable
            routable -= 1
            self.actions.append(RouteAway(r.name))

    # helpers -------------------------------------------------------------

    def _start(self) -> None:
        index = self.memory.next_index
        self.memory = dataclasses.replace(self.memory, next_index=index + 1)
        name = f"{self.ref.name}-{index}"
        self.actions.append(StartReplica(name, index, self.revision, serve_config(self.ref, self.spec, index)))
        self._event(EventType.NORMAL, PoolReason.REPLICA_STARTED, f"replica {name} starting (revision {self.revision})")

    def _in_service_count(self) -> int:
        return sum(r.in_service for r in self.observed.replicas)

    def _event(self, type_: EventType, reason: PoolReason, message: str) -> None:
        self.actions.append(Event(type_, str(reason), message))

    # status --------------------------------------------------------------

    def compute_status(self) -> ServingPoolStatus:
        s, obs = self.status, self.observed
        alive = [r for r in obs.replicas if r.alive]
        ready = [r for r in alive if r.state is ReplicaState.READY]
        routable = [r for r in alive if r.routable]
        updated = [r for r in alive if r.revision == self.revision and r.in_service]
        s.observed_generation = self.ref.object_generation
        s.replicas, s.ready_replicas, s.routable_replicas, s.updated_replicas = len(alive), len(ready), len(routable), len(updated)
        s.roles = [RoleStatus(name=RoleName.UNIFIED, replicas=len(alive), ready_replicas=len(ready), routable_replicas=len(routable), updated_replicas=len(updated))]
        s.queue_depth = sum(r.waiting for r in alive)
        s.ttft_seconds = LatencyStatus(p50=_median([r.ttft_p50 for r in routable]), p99=_worst([r.ttft_p99 for r in routable]))
        s.tpot_seconds = LatencyStatus(p50=_median([r.tpot_p50 for r in routable]), p99=_worst([r.tpot_p99 for r in routable]))
        tps = [r.tokens_per_second for r in routable if r.tokens_per_second is not None]
        s.tokens_per_second = sum(tps) if tps else None
        s.endpoint = obs.endpoint
        s.selector = f"{POOL_LABEL}={self.ref.name}"
        rolling = any(r.revision != self.revision for r in alive) or len(updated) != self.desired
        floor = max(self.desired - self.spec.rollout.max_unavailable, min(self.desired, 1))
        available = len(routable) >= floor
        if self.desired == 0 and not alive:
            s.phase = PoolPhase.SCALED_TO_ZERO
        elif not routable:
            s.phase = PoolPhase.PENDING
        else:
            s.phase = PoolPhase.UPDATING if rolling else PoolPhase.RUNNING
        now = rfc3339(obs.now)
        gen = self.ref.object_generation
        s.conditions = set_condition(
            s.conditions, PoolConditionType.AVAILABLE, available,
            str(PoolReason.MINIMUM_ROUTABLE if available else PoolReason.TOO_FEW_ROUTABLE),
            f"{len(routable)} of {self.desired} replicas routable (at least {floor} wanted)", now=now, observed_generation=gen)
        s.conditions = set_condition(
            s.conditions, PoolConditionType.PROGRESSING, rolling,
            str(PoolReason.ROLLOUT_STARTED if rolling else PoolReason.STABLE),
            f"{len(updated)} of {self.desired} replicas at revision {self.revision}", now=now, observed_generation=gen)
        return s


def _retire_order(r: ReplicaObservation) -> tuple:
    """Not-routable ones first (nothing to drain), then the least loaded, then the newest."""
    return (r.routable, r.load, -r.index)


def _median(values: list[float | None]) -> float | None:
    xs = sorted(v for v in values if v is not None)
    return xs[len(xs) // 2] if xs else None


def _worst(values: list[float | None]) -> float | None:
    xs = [v for v in values if v is not None]
    return max(xs) if xs else None
