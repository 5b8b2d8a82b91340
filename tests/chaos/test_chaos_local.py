"""The chaos harness end to end on the embedded default: one seeded plan (a damaged
checkpoint, a kill during a checkpoint write, a kill in the restarted generation) struck
real ``shardwright run`` ranks, and every invariant held against the fault-free run."""

from __future__ import annotations

import pytest

from bench import chaos, chaos_plan

pytestmark = pytest.mark.slow

SEED, FAULTS = 0, 3


def test_the_plan_of_the_seed_is_the_one_this_test_means():
    plan = chaos_plan.draw(SEED, FAULTS)
    assert plan.target is chaos_plan.FIXED and not plan.expect_failure
    assert [chaos_plan.kind_of(f) for f in plan.faults] == ["corrupt-checkpoint", "kill-during-checkpoint", "kill"]


def test_a_seeded_run_keeps_every_invariant(tmp_path, capsys):
    code = chaos.main(["--seed", str(SEED), "--faults", str(FAULTS), "--workdir", str(tmp_path)])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "| **all** | 3 | 3 | 3 |" in out, out  # injected, struck, survived
    assert "BROKEN" not in out and out.count("  kept ") == 6
