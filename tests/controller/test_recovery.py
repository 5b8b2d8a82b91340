"""Recovery transitions of the reconcile core: hangs, lost steps, damaged checkpoints,
resizing on capacity change, and waiting when capacity is short."""

from __future__ import annotations

import dataclasses

from shardwright.operator.api import Phase, RankState
from shardwright.operator.controller import Event, Progress, RankObservation, StartGeneration, StopGeneration
from shardwright.operator.planner import plan_for_capacity

from shardwright.operator.api import CheckpointRef

from .driver import Driver, checkpoint, ranks, reasons, running, spec

DEADLINE = 30


def hang_driver() -> Driver:
    d = Driver(spec(**{"failurePolicy.progressDeadlineSeconds": DEADLINE}))
    d.start()
    d.tick(2, running(1), Progress(generation=1, step=5))
    return d


def test_no_progress_within_the_deadline_restarts_the_generation():
    d = hang_driver()
    quiet = d.tick(2 + DEADLINE, running(1), Progress(generation=1, step=5))
    assert not quiet.of_type(StopGeneration) and quiet.requeue_after is not None
    hung = d.tick(2 + DEADLINE + 1, ranks(1, RankState.RUNNING, RankState.RUNNING, activity="computing"), Progress(generation=1, step=5), (checkpoint(4),))
    assert "ProgressDeadlineExceeded" in reasons(hung)
    assert hung.of_type(StopGeneration)[0].generation == 1
    assert hung.status.phase is Phase.RESTARTING and hung.status.restarts == 1
    assert hung.status.steps_lost == 1  # step 5, checkpoint at 4


def test_a_deadline_passed_while_a_ranks_node_is_lost_spends_no_restart():
    """Its ranks may have trained on unseen (cluster chaos seed 1101: a generation finished
    on a NotReady node): the node's disruption, as its eviction would be."""
    d = hang_driver()
    on_lost_node = (RankObservation(1, 0, RankState.RUNNING, node="n0"), RankObservation(1, 1, RankState.RUNNING, node="n1", node_lost=True))
    lost = d.tick(2 + DEADLINE + 1, on_lost_node, Progress(generation=1, step=5), (checkpoint(4),))
    assert "ProgressDeadlineExceeded" in reasons(lost)
    assert lost.of_type(StopGeneration)[0].generation == 1
    assert lost.status.phase is Phase.RESTARTING and lost.status.restarts == 0
    (event,) = [e for e in lost.of_type(Event) if e.reason == "ProgressDeadlineExceeded"]
    assert "rank 1's node n1 NotReady or gone" in event.message


def test_a_rank_failing_beside_a_rank_on_a_lost_node_or_being_evicted_spends_no_restart():
    """Its rendezvous or collective times out first (cluster chaos seed 1300: rank 1 gave up
    after 60 s waiting for rank 0, whose node was NotReady): the disruption's doing."""
    for beside in (dict(node="n0", node_lost=True), dict(disrupted=True)):
        d = hang_driver()
        failed = (RankObservation(1, 0, RankState.RUNNING, **beside), RankObservation(1, 1, RankState.FAILED, exit_code=1, message="DistNetworkError"))
        result = d.tick(3, failed, Progress(generation=1, step=5), (checkpoint(4),))
        assert result.status.phase is Phase.RESTARTING and result.status.restarts == 0, beside
        (event,) = [e for e in result.of_type(Event) if e.reason == "RankFailed"]
        assert "rank 0 was" in event.message
    d = hang_driver()  # beside a rank that is fine, the failure is the job's
    alone = d.tick(3, (RankObservation(1, 0, RankState.RUNNING, node="n0"), RankObservation(1, 1, RankState.FAILED, exit_code=1)), Progress(generation=1, step=5))
    assert alone.status.restarts == 1


def test_progress_resets_the_deadline_and_start_up_is_not_counted():
    d = Driver(spec(**{"failurePolicy.progressDeadlineSeconds": DEADLINE}))
    d.start()
    # No report yet from the new ranks: however long start-up takes, it is not a hang.
    assert not d.tick(10 * DEADLINE, running(1)).of_type(StopGeneration)
    d.tick(10 * DEADLINE + 1, running(1), Progress(generation=1, step=1))
    later = d.tick(11 * DEADLINE, running(1), Progress(generation=1, step=2))
    assert later.status.phase is Phase.RUNNING and not later.of_type(StopGeneration)


def test_restart_resumes_from_newest_undamaged_checkpoint_and_reports_the_damaged_one():
    d = hang_driver()
    d.tick(3, (running(1)[0], RankObservation(1, 1, RankState.FAILED, message="boom")), None, (checkpoint(2), checkpoint(4)))
    start = d.tick(10, (), None, (checkpoint(2), checkpoint(4))).of_type(StartGeneration)[0]
    assert start.config.checkpoint.resume_from.endswith("step-00000004")
    reported = d.tick(11, running(2), Progress(generation=2, step=2, resumed_from=2, rejected=((4, "shard fails its CRC-32"),)), (checkpoint(2),))
    assert "CheckpointRejected" in reasons(reported)
    assert reported.status.rejected_checkpoints == [4]
    again = d.tick(12, running(2), Progress(generation=2, step=3, resumed_from=2, rejected=((4, "x"),)), (checkpoint(2),))
    assert "CheckpointRejected" not in reasons(again)  # told once


def test_capacity_change_resizes_gracefully_without_spending_the_budget():
    d = Driver(spec(**{"workers": [{"name": "worker", "replicas": 4}], "elastic": {"minReplicas": 2, "maxReplicas": 4}}))
    d.start()
    d.tick(1, running(1, world=4))
    d.plan = plan_for_capacity(d.spec, 2)
    resize = d.tick(2, running(1, world=4), Progress(generation=1, step=7), (checkpoint(5),))
    assert "Resizing" in reasons(resize)
    assert resize.of_type(StopGeneration)[0].graceful
    # The ranks checkpoint at step 8 and exit; the next generation starts at 2 ranks.
    done = tuple(RankObservation(1, i, RankState.SUCCEEDED) for i in range(4))
    at_four = CheckpointRef(step=8, uri="/ckpt/tiny-train/step-00000008", world_size=4, layout="dp=4,sp=1")
    restart = d.tick(3, done, None, (checkpoint(5), at_four))
    (start,) = restart.of_type(StartGeneration)
    assert start.plan.world_size == 2 and start.config.checkpoint.resume_from.endswith("step-00000008")
    assert "Resharded" in reasons(restart)
    assert restart.status.restarts == 0 and restart.status.phase is Phase.PENDING


def test_observed_generation_is_the_spec_that_runs():
    """A new world size runs once a generation of that size starts: until then the spec of
    the running generation stays observed. A policy edit is applied at once."""
    d = Driver()
    d.start()
    assert d.status.observed_generation == 7
    d.edit(workers=[{"name": "worker", "replicas": 3}])
    resize = d.tick(2, running(1), Progress(generation=1, step=7), (checkpoint(5),))
    assert resize.status.phase is Phase.RESTARTING and resize.status.observed_generation == 7
    done = ranks(1, RankState.SUCCEEDED, RankState.SUCCEEDED)
    assert d.tick(3, done, None, (checkpoint(8),)).of_type(StartGeneration)[0].plan.world_size == 3
    assert d.status.observed_generation == 8  # its pods are the new spec's
    d.edit(workers=[{"name": "worker", "replicas": 3}], **{"failurePolicy.maxRestarts": 9})
    assert d.tick(4, running(2, world=3)).status.observed_generation == 9


def test_a_generation_waiting_for_a_readmitted_node_starts_again_without_spending_the_budget():
    d = Driver()
    d.tick()
    waiting = ranks(1, RankState.RUNNING, RankState.PENDING, reason="Unschedulable", message="Unschedulable: 0/3 nodes are available")
    why = "pod tiny-train-g1-worker-1 waits for a node and keeps off node-b, which the job no longer avoids"
    again = d.tick(1, waiting, stale_placement={1: why})
    (stop,) = again.of_type(StopGeneration)
    assert stop.generation == 1 and not stop.graceful
    assert reasons(again) == ["NodeReadmitted"] and again.status.phase is Phase.RESTARTING
    assert not d.tick(2, waiting, stale_placement={1: why}).of_type(Event)  # said once
    started = d.tick(3, ())
    (start,) = started.of_type(StartGeneration)
    assert start.generation == 2 and started.status.restarts == 0
    # A generation whose ranks all run is never restarted for it.
    d = Driver()
    d.start()
    assert not d.tick(2, running(1), stale_placement={1: why}).of_type(StopGeneration)


def test_a_failed_rank_is_a_failure_even_when_capacity_shrank_at_once():
    d = Driver(spec(**{"workers": [{"name": "worker", "replicas": 4}], "elastic": {"minReplicas": 2, "maxReplicas": 4}}))
    d.start()
    d.tick(1, running(1, world=4))
    d.plan = plan_for_capacity(d.spec, 2)
    lost = running(1, world=4)[:2] + tuple(RankObservation(1, i, RankState.FAILED, message="host lost") for i in (2, 3))
    result = d.tick(2, lost, None, (checkpoint(5),))
    assert "RankFailed" in reasons(result) and "Resizing" not in reasons(result)
    assert result.status.restarts == 1


def test_too_little_capacity_waits_and_says_why_once():
    d = Driver(spec(**{"workers": [{"name": "worker", "replicas": 4}], "elastic": {"minReplicas": 3, "maxReplicas": 4}}))
    d.plan = plan_for_capacity(d.spec, 2)
    assert d.plan is None
    first = d.tick()
    assert not first.of_type(StartGeneration) and "InsufficientCapacity" in reasons(first)
    second = d.tick(5)
    assert "InsufficientCapacity" not in reasons(second) and not second.of_type(StartGeneration)
    d.plan = plan_for_capacity(d.spec, 3)
    assert d.tick(6).of_type(StartGeneration)[0].plan.world_size == 3


def test_elastic_replicas_shrink_to_what_fits():
    s = spec(**{"workers": [{"name": "worker", "replicas": 4}], "elastic": {"minReplicas": 2, "maxReplicas": 4}})
    assert plan_for_capacity(s, None).world_size == 4
    assert plan_for_capacity(s, 3).world_size == 3
    assert plan_for_capacity(s, 1) is None
    rigid = spec(**{"workers": [{"name": "worker", "replicas": 4}]})
    assert plan_for_capacity(rigid, 3) is None and plan_for_capacity(rigid, 8).world_size == 4


def test_platform_failure_reason_reaches_condition_and_event():
    d = Driver()
    d.start()
    oom = (running(1)[0], RankObservation(1, 1, RankState.FAILED, exit_code=137, message="OOMKilled: raise the memory limit", reason="OOMKilled"))
    result = d.tick(2, oom)
    assert "OOMKilled" in reasons(result)
    restarting = next(c for c in result.status.conditions if c.type == "Restarting")
    assert restarting.reason == "OOMKilled" and "exit code 137" in restarting.message


def test_pending_ranks_say_why_they_are_not_up():
    d = Driver()
    d.tick()
    pulling = ranks(1, RankState.PENDING, RankState.PENDING, message="ImagePullBackOff: image not found", reason="ImagePullBackOff")
    result = d.tick(1, pulling)
    cond = next(c for c in result.status.conditions if c.type == "Running")
    assert cond.status == "False" and cond.reason == "ImagePullBackOff" and "image not found" in cond.message
    assert result.status.phase is Phase.PENDING


def test_the_rank_that_died_is_named_not_its_victims():
    d = Driver()
    d.start()
    together = (
        RankObservation(1, 0, RankState.FAILED, message="DistBackendError: Connection reset by peer"),
        RankObservation(1, 1, RankState.FAILED, message="rank process died", died=True),
    )
    result = d.tick(2, together)
    event = next(e for e in result.of_type(Event) if e.reason == "RankFailed")
    assert event.message.startswith("Rank 1 failed: rank process died"), event.message


def test_a_restart_on_kubernetes_says_it_resumes_from_the_newest_checkpoint_in_storage():
    """The ranks load the newest checkpoint their job committed, which the operator may not
    know of (rank 0 killed before it was polled, its probes blocked): never "from scratch"."""
    d = Driver()
    d.job = dataclasses.replace(d.job, resume_newest=True)
    d.start()
    d.tick(2, (running(1)[0], RankObservation(1, 1, RankState.FAILED, message="boom")))
    restart = d.tick(10, ())
    assert restart.of_type(StartGeneration)[0].config.checkpoint.resume_newest
    assert [e.message for e in restart.of_type(Event)] == [
        "Generation 2 (dp=2,sp=1 over 2 ranks) resumes from the newest checkpoint of this job in storage (none known to the "
        "operator), else from scratch"]
    known = Driver()
    known.job = d.job
    known.start()
    known.tick(2, (running(1)[0], RankObservation(1, 1, RankState.FAILED, message="boom")), None, (checkpoint(40),))
    (event,) = known.tick(10, (), None, (checkpoint(40),)).of_type(Event)
    assert event.message.endswith("resumes from step 40 or a newer checkpoint of this job in storage")


def test_a_rank_of_the_ended_generation_seen_late_is_stopped_before_the_restart():
    """A pod cache that lags (an operator starved of CPU) shows a rank missing, the
    generation restarts, and then the rank's pod shows up running: it is stopped like its
    generation's other ranks, instead of the job waiting in Restarting for it forever."""
    d = Driver()
    d.tick()
    lagging = (RankObservation(1, 0, RankState.PENDING),
               RankObservation(1, 1, RankState.FAILED, message="PodVanished: the pod of rank 1 is missing", reason="PodVanished",
                               died=True, disrupted=True))
    restart = d.tick(31, lagging)
    assert d.status.phase is Phase.RESTARTING and [s.generation for s in restart.of_type(StopGeneration)] == [1]
    late = d.tick(32, (RankObservation(1, 1, RankState.RUNNING),))
    assert [s.generation for s in late.of_type(StopGeneration)] == [1] and not late.of_type(StartGeneration)
    assert [s.generation for s in d.tick(33).of_type(StartGeneration)] == [2]
