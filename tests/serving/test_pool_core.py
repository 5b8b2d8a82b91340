"""The pure pool core on a simulated pool and a fake clock: scaling, rollouts, replacement.

``Sim`` carries out the core's actions on plain replica records the way a backend would,
and steps the replicas' lives (warm-up, the router's probe, a drain ending) when a test
says so; every pass records how many replicas were alive and routable, so a test can
check maxSurge / maxUnavailable at every moment of a rollout.
"""

from __future__ import annotations

import dataclasses
import datetime

from shardwright.operator.api.servingpool import PoolPhase, PoolReason, ReplicaState, ServingPoolSpec
from shardwright.operator.controller.pool import (
    DrainReplica,
    ForgetReplica,
    PoolRef,
    RegisterReplica,
    RouteAway,
    StartReplica,
    StopReplica,
    reconcile_pool,
    revision,
)
from shardwright.operator.controller.pool_observed import PoolObserved, ReplicaObservation

REF = PoolRef("p", "ns", object_generation=1)
T0 = datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc)


def spec(**kw) -> ServingPoolSpec:
    base = {"model": {"preset": "tiny"}, "replicas": 2}
    return ServingPoolSpec.model_validate(base | kw)


class Sim:
    def __init__(self, s: ServingPoolSpec) -> None:
        self.spec, self.now = s, T0
        self.reps: dict[str, ReplicaObservation] = {}
        self.status = self.memory = None
        self.events: list[str] = []
        self.alive: list[int] = []
        self.routable: list[int] = []

    def tick(self, seconds: float = 1.0, held: int = 0):
        obs = PoolObserved(self.now, tuple(self.reps.values()), held_requests=held, endpoint="http://127.0.0.1:1")
        result = reconcile_pool(REF, self.spec, self.status, obs, self.memory)
        for a in result.actions:
            self._apply(a)
        self.status, self.memory = result.status, result.memory
        self.alive.append(sum(r.alive for r in self.reps.values()))
        self.routable.append(sum(r.routable for r in self.reps.values()))
        self.now += datetime.timedelta(seconds=seconds)
        return result

    def _apply(self, a) -> None:
        if isinstance(a, StartReplica):
            self.reps[a.name] = ReplicaObservation(a.name, a.index, a.revision, ReplicaState.STARTING, self.now)
        elif isinstance(a, RegisterReplica):
            self._set(a.name, registered=True)
        elif isinstance(a, RouteAway):
            self._set(a.name, routed_away=True, routable=False)
        elif isinstance(a, DrainReplica):
            self._set(a.name, stopping=True, state=ReplicaState.DRAINING, since=self.now)
        elif isinstance(a, StopReplica):
            self._set(a.name, stopping=True, routable=False, state=ReplicaState.EXITED, exit_code=-9)
        elif isinstance(a, ForgetReplica):
            del self.reps[a.name]
        elif hasattr(a, "reason"):
            self.events.append(a.reason)

    def _set(self, name: str, **kw) -> None:
        self.reps[name] = dataclasses.replace(self.reps[name], **kw)

    # the replicas' own lives
    def warm(self) -> None:
        for n, r in list(self.reps.items()):
            if r.state is ReplicaState.STARTING:
                self._set(n, state=ReplicaState.READY, since=self.now)

    def probe(self) -> None:
        for n, r in list(self.reps.items()):
            if r.state is ReplicaState.READY and r.registered and r.in_service:
                self._set(n, routable=True)

    def drained(self) -> None:
        for n, r in list(self.reps.items()):
            if r.state is ReplicaState.DRAINING:
                self._set(n, state=ReplicaState.EXITED, exit_code=0, routable=False)

    def load(self, **per_replica) -> None:
        for n, r in list(self.reps.items()):
            self._set(n, **per_replica)

    def settle(self, passes: int = 6, seconds: float = 1.0) -> None:
        for _ in range(passes):
            self.tick(seconds)
            self.warm()
            self.tick(0)
            self.probe()
            self.drained()

    def revisions(self) -> set[str]:
        return {r.revision for r in self.reps.values()}


def test_a_new_pool_starts_its_replicas_and_is_routable_only_once_registered_and_probed():
    sim = Sim(spec())
    first = sim.tick()
    assert [a.name for a in first.of_type(StartReplica)] == ["p-0", "p-1"]
    assert first.status.phase is PoolPhase.PENDING and first.status.selector == "shardwright.io/pool=p"
    config = first.of_type(StartReplica)[0].config
    assert config.pool == "p" and config.replica == 0 and config.model_name == "p"
    sim.warm()
    second = sim.tick()
    assert [a.name for a in second.of_type(RegisterReplica)] == ["p-0", "p-1"]
    assert second.status.ready_replicas == 2 and second.status.routable_replicas == 0  # ready is not routable
    sim.probe()
    third = sim.tick()
    assert third.status.phase is PoolPhase.RUNNING and third.status.routable_replicas == 2
    assert not third.of_type(StartReplica)
    assert [c.status for c in third.status.conditions] == ["True", "False"]  # Available, not Progressing


def test_a_replica_that_dies_is_forgotten_and_replaced():
    sim = Sim(spec())
    sim.settle()
    sim._set("p-0", state=ReplicaState.EXITED, routable=False, exit_code=-9)
    result = sim.tick()
    assert ForgetReplica("p-0") in result.actions and [a.name for a in result.of_type(StartReplica)] == ["p-2"]
    assert str(PoolReason.REPLICA_FAILED) in sim.events
    sim.settle()
    assert sorted(sim.reps) == ["p-1", "p-2"] and sim.status.routable_replicas == 2


def _roll(sim: Sim, new: ServingPoolSpec) -> None:
    sim.spec = new
    for _ in range(20):
        sim.settle(passes=1)
    assert sim.revisions() == {revision(new)}


def test_a_rollout_with_surge_keeps_every_replica_routable_and_one_extra_at_most():
    s = spec(replicas=3, rollout={"maxSurge": 1, "maxUnavailable": 0})
    sim = Sim(s)
    sim.settle()
    start = len(sim.routable)
    _roll(sim, s.model_copy(update={"engine": s.engine.model_copy(update={"max_batch_tokens": 128})}))
    assert min(sim.routable[start:]) >= 3 and max(sim.alive[start:]) <= 4
    assert sim.status.updated_replicas == 3 and sim.status.routable_replicas == 3 and sim.status.phase is PoolPhase.RUNNING
    assert str(PoolReason.ROLLOUT_STARTED) in sim.events and str(PoolReason.ROLLOUT_COMPLETE) in sim.events


def test_a_rollout_without_surge_takes_one_down_at_a_time_and_never_adds_a_replica():
    s = spec(replicas=3, rollout={"maxSurge": 0, "maxUnavailable": 1})
    sim = Sim(s)
    sim.settle()
    start = len(sim.routable)
    _roll(sim, s.model_copy(update={"model": s.model.model_copy(update={"seed": 9})}))
    assert min(sim.routable[start:]) >= 2 and max(sim.alive[start:]) <= 3


def test_retiring_routes_away_first_and_drains_on_a_later_pass():
    s = spec(replicas=3)
    sim = Sim(s)
    sim.settle()
    sim._set("p-1", waiting=3)
    sim.spec = s.model_copy(update={"replicas": 1})
    first = sim.tick()
    assert {a.name for a in first.of_type(RouteAway)} == {"p-0", "p-2"}  # the least loaded go
    assert not first.of_type(DrainReplica)
    second = sim.tick()
    assert {a.name for a in second.of_type(DrainReplica)} == {"p-0", "p-2"}
    assert sim.reps["p-1"].routable and sim.status.routable_replicas == 1
    sim.drained()
    sim.tick()
    assert sorted(sim.reps) == ["p-1"]


def test_a_drain_that_overruns_its_timeout_is_ended():
    s = spec(replicas=2, rollout={"drainTimeoutSeconds": 5})
    sim = Sim(s)
    sim.settle()
    sim.spec = s.model_copy(update={"replicas": 1})
    sim.tick()
    sim.tick()  # drain starts
    assert not sim.tick(seconds=20).of_type(StopReplica)
    assert sim.tick().of_type(StopReplica)
    assert str(PoolReason.DRAIN_TIMEOUT) in sim.events


def test_changing_replicas_router_or_slo_rolls_nothing():
    s = spec()
    assert revision(s) == revision(s.model_copy(update={"replicas": 4, "router": s.router.model_copy(update={"retries": 5})}))
    assert revision(s) != revision(s.model_copy(update={"engine": s.engine.model_copy(update={"kv_blocks": 512})}))


def _auto(**kw) -> ServingPoolSpec:
    auto = {"signal": "queue-depth", "target": 4, "scaleDownStabilizationSeconds": 60} | kw
    return spec(replicas=1, roles=[{"name": "unified", "minReplicas": 1, "maxReplicas": 4}], autoscaling=auto)


def test_a_burst_scales_up_at_once_within_max_and_back_down_only_after_stabilisation():
    sim = Sim(_auto())
    sim.settle()
    sim.load(waiting=10)  # 10 waiting on one replica against a target of 4 -> 3 replicas
    sim.tick()
    assert sim.memory.desired == 3 and str(PoolReason.SCALED_UP) in sim.events
    sim.settle()
    sim.load(waiting=20)  # 20 per replica on 3 would be 15: capped at maxReplicas
    sim.tick()
    assert sim.memory.desired == 4
    sim.settle()
    sim.load(waiting=0, running=0)
    for _ in range(5):
        sim.tick(seconds=10)
    assert sim.memory.desired == 4 and sim.status.routable_replicas == 4  # quiet for 50 s: still within the window
    for _ in range(3):
        sim.tick(seconds=10)
    assert sim.memory.desired == 1 and str(PoolReason.SCALED_DOWN) in sim.events
    sim.settle()
    assert sim.status.routable_replicas == 1 and len(sim.reps) == 1


def test_a_ttft_signal_scales_on_the_worst_replica():
    sim = Sim(_auto(signal="ttft", target=0.5))
    sim.settle()
    sim.load(ttft_p99=1.4)
    sim.tick()
    assert sim.memory.desired == 3


def test_an_idle_pool_goes_to_zero_and_a_held_request_wakes_it():
    s = _auto(idleToZero=True, idleSeconds=30)
    s = s.model_copy(update={"roles": [s.roles[0].model_copy(update={"min_replicas": 0})]})
    sim = Sim(s)
    sim.settle()
    for _ in range(4):
        sim.tick(seconds=10)
    sim.settle(passes=2, seconds=0)
    assert sim.memory.desired == 0 and not sim.reps and sim.status.phase is PoolPhase.SCALED_TO_ZERO
    result = sim.tick(held=2)
    assert len(result.of_type(StartReplica)) == 1


def test_the_same_observation_gives_the_same_status_and_no_new_actions():
    sim = Sim(spec())
    sim.settle()
    obs = PoolObserved(sim.now, tuple(sim.reps.values()))
    a = reconcile_pool(REF, sim.spec, sim.status, obs, sim.memory)
    b = reconcile_pool(REF, sim.spec, a.status, obs, a.memory)
    assert a.actions == b.actions == () and a.status == b.status
