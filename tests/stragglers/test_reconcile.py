"""Straggler handling in the reconcile core: conditions, events once, shares until applied,
replacement without spending the restart budget."""

from __future__ import annotations

from shardwright.operator.api import Phase, RankState
from shardwright.operator.controller import Progress, RankObservation, ReplaceRank, SetShares, StartGeneration, StopGeneration
from tests.controller.driver import Driver, checkpoint, condition, reasons, spec

from .timings import steps


def running(generation: int, world: int = 2):
    return tuple(RankObservation(generation, i, RankState.RUNNING, node=f"node-{i}") for i in range(world))


def progress(timings, generation=1, shares=None):
    return Progress(generation=generation, step=timings[-1].step, timings=tuple(timings), data_shares=shares)


def driver(action: str) -> Driver:
    d = Driver(spec(**{"stragglerPolicy": {"action": action}}))
    d.start()
    return d


def test_report_sets_degraded_and_tells_once():
    d = driver("report")
    slow = steps(40, slow={1: 1.5}, slow_from=20)
    first = d.tick(2, running(1), progress(slow))
    assert reasons(first) == ["StragglerDetected"]
    assert "Rank 1 on node-1 is a straggler at step 24" in first.of_type(type(first.actions[0]))[0].message
    st = first.status
    assert [(s.rank, s.node, s.since_step, str(s.action)) for s in st.stragglers] == [(1, "node-1", 24, "report")]
    assert condition(st, "Degraded").status == "True" and condition(st, "Degraded").reason == "StragglerDetected"
    again = d.tick(3, running(1), progress(steps(40, first=5, slow={1: 1.5}, slow_from=20)))
    assert reasons(again) == [] and not again.of_type(SetShares)
    assert again.status.stragglers[0].since_step == 24
    cleared = d.tick(4, running(1), progress(steps(40, first=60, seed=3)))
    assert reasons(cleared) == ["StragglerCleared"] and cleared.status.stragglers == []
    assert condition(cleared.status, "Degraded").status == "False"


def test_rebalance_sends_shares_until_rank_0_reports_them():
    d = driver("rebalance")
    r = d.tick(2, running(1), progress(steps(40, slow={1: 1.5}, slow_from=20)))
    assert reasons(r) == ["StragglerDetected", "StragglerMitigated"]
    (sent,) = r.of_type(SetShares)
    assert sent.generation == 1 and sent.shares[0] > 1.1 > 0.9 > sent.shares[1]
    assert r.status.data_shares == list(sent.shares) and r.status.straggler_mitigated_step == 40
    again = d.tick(3, running(1), progress(steps(40, first=3, slow={1: 1.5}, slow_from=20)))
    assert again.of_type(SetShares) == [sent] and reasons(again) == []  # not applied yet: repeated
    applied = d.tick(4, running(1), progress(steps(40, first=5, slow={1: 1.5}, slow_from=20), shares=sent.shares))
    assert not applied.of_type(SetShares) and applied.status.phase is Phase.RUNNING


def test_replace_ends_the_generation_gracefully_without_spending_restarts():
    d = driver("replace")
    d.tick(2, running(1), progress(steps(40, slow={1: 1.5}, slow_from=20)))
    shares = tuple(d.status.data_shares)
    # Still slow once the cool-down (window = 20 steps) has passed: replaced.
    r = d.tick(3, running(1), progress(steps(40, first=21, slow={1: 1.5}, slow_from=1), shares=shares), (checkpoint(60),))
    assert "StragglerMitigated" in reasons(r)
    (replace,) = r.of_type(ReplaceRank)
    assert (replace.generation, replace.rank, replace.node) == (1, 1, "node-1")
    (stop,) = r.of_type(StopGeneration)
    assert stop.graceful and stop.generation == 1
    assert r.status.phase is Phase.RESTARTING and r.status.restarts == 0
    assert condition(r.status, "Degraded").reason == "StragglerMitigated"
    done = tuple(RankObservation(1, i, RankState.SUCCEEDED) for i in range(2))
    nxt = d.tick(4, done, None, (checkpoint(60),))
    (start,) = nxt.of_type(StartGeneration)
    assert start.config.checkpoint.resume_from.endswith("step-00000060")
    assert nxt.status.stragglers == [] and nxt.status.data_shares is None and nxt.status.restarts == 0


def test_no_straggler_handling_while_a_rank_is_failing():
    d = driver("replace")
    failing = (running(1)[0], RankObservation(1, 1, RankState.FAILED, message="boom"))
    r = d.tick(2, failing, progress(steps(40, slow={1: 1.5}, slow_from=20)))
    assert "RankFailed" in reasons(r) and not r.of_type(ReplaceRank)
