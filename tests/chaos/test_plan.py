"""Fault plans: the same seed gives the same plan, every fault reads back through the CLI's
parser, and the constraints that keep a plan meaningful hold for many seeds."""

from __future__ import annotations

import pytest

from bench import chaos_plan
from shardwright.workers.faults import parse_fault

SEEDS = range(300)


def test_the_same_seed_gives_the_same_plan():
    assert [chaos_plan.draw(s, 4) for s in SEEDS] == [chaos_plan.draw(s, 4) for s in SEEDS]
    assert len({chaos_plan.draw(s, 4).injects.__repr__() for s in SEEDS}) > 250  # and seeds differ


@pytest.mark.parametrize("faults", [1, 3, 6])
def test_plans_keep_their_constraints(faults):
    for seed in SEEDS:
        plan = chaos_plan.draw(seed, faults)
        assert [parse_fault(t) for t in plan.injects] == list(plan.faults)
        assert 0 < len(plan.faults) <= faults
        restarts = [f for f in plan.faults if chaos_plan.kind_of(f) in ("kill", "kill-during-checkpoint", "hang")]
        # One restart fault per generation, each later than the last, before the job ends.
        assert [f.gen for f in restarts] == list(range(1, len(restarts) + 1))
        assert all(b.step - a.step >= chaos_plan.GAP for a, b in zip(restarts, restarts[1:]))
        assert all(f.step < plan.target.steps for f in plan.faults)
        interval = plan.target.interval
        for failing in restarts:
            # The damaged ones are the newest its generation surely committed before it.
            damaged = [f.step for f in plan.faults if f.kind == "corrupt-checkpoint" and f.gen == failing.gen]
            if failing.step % interval == 0:
                newest = failing.step - interval  # a kill strikes before its step's checkpoint
            else:
                newest = failing.step - failing.step % interval
                assert not damaged or failing.step - newest >= chaos_plan.COMMIT_LAG
            assert damaged == sorted(range(newest, newest - len(damaged) * interval, -interval))
            assert failing.step % interval == 0 or not failing.during
        if plan.target is chaos_plan.ELASTIC:
            after = [f for f in plan.faults if f.into is not None]
            shrink, grow = plan.faults[len(plan.faults) - len(after) - 2 :][:2]
            assert (shrink.kind, grow.kind) == ("shrink", "grow")
            assert grow.step - shrink.step >= chaos_plan.CAPACITY_GAP and grow.step < plan.target.steps
            assert grow.step + chaos_plan.ROOM_AFTER_GROW <= plan.target.steps
            assert not plan.expect_failure
            # After the grow: kills and hangs a few steps into the regrown generation and the next.
            assert len(after) <= 2 and all(f.kind in ("kill", "hang") and f.into in chaos_plan.INTO for f in after)
            assert [f.gen for f in after] == list(range(len(restarts) + 3, len(restarts) + 3 + len(after)))
        else:
            assert all(f.into is None for f in plan.faults)
        assert plan.max_restarts in (plan.restarts_needed, plan.restarts_needed - 1)


def test_some_plans_spend_the_budget_and_some_resize():
    plans = [chaos_plan.draw(s, 3) for s in SEEDS]
    assert any(p.expect_failure for p in plans)
    assert any(p.target is chaos_plan.ELASTIC for p in plans)
    kinds = {chaos_plan.kind_of(f) for p in plans for f in p.faults}
    assert kinds == {"kill", "kill-during-checkpoint", "hang", "corrupt-checkpoint", "shrink", "grow", "kill-after-resize", "hang-after-resize"}
    after = [(f, p) for p in plans for f in p.faults if f.into is not None]
    # Some strike a rank only the regrown size has.
    assert any(f.rank >= p.target.replicas - next(s.ranks for s in p.faults if s.kind == "shrink") for f, p in after)


def test_the_manifest_carries_the_plan_job():
    example = {"metadata": {"name": "x"}, "spec": {"workers": [{"replicas": 1}], "training": {"steps": 1}}}
    doc = chaos_plan.ELASTIC.manifest(example, max_restarts=2)
    assert doc["spec"]["workers"][0]["replicas"] == 4 and doc["spec"]["elastic"] == {"minReplicas": 2, "maxReplicas": 4}
    assert doc["spec"]["failurePolicy"]["maxRestarts"] == 2 and doc["spec"]["training"]["steps"] == 105
    assert example["spec"]["workers"][0]["replicas"] == 1  # the example itself is untouched
