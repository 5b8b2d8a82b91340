"""The pure detector: who is slow, how fast it is found, and what it never mistakes for one."""

from __future__ import annotations

import dataclasses

import pytest

from shardwright.operator.api import StragglerAction, StragglerPolicySpec, StragglerStatus
from shardwright.operator.controller import stragglers

from .timings import steps

POLICY = StragglerPolicySpec()


def flagged(timings, policy=POLICY) -> dict[int, int | None]:
    return {s.rank: s.below_since for s in stragglers.assess(timings, policy) if s.below}


@pytest.mark.parametrize("world, rank", [(2, 1), (4, 2), (8, 5)])
def test_slow_rank_is_flagged_within_min_steps_and_no_other(world, rank):
    timings = steps(60, world, slow={rank: 1.5}, slow_from=30)
    got = flagged(timings)
    assert list(got) == [rank]
    assert got[rank] - 30 + 1 == POLICY.min_steps  # flagged at its 5th slow step


@pytest.mark.parametrize("seed", range(20))
def test_clean_noisy_runs_flag_nothing(seed):
    timings = steps(64, 4, seed=seed, noise=0.15)
    assert flagged(timings) == {}


def test_whole_host_hiccups_count_neither_way():
    timings = steps(64, 2, hiccups=tuple(range(30, 40)))
    assert flagged(timings) == {}


def ramp(start: int, end: int, to: float):
    """The host's speed factor: 1 until ``start``, moving linearly to ``to`` at ``end``."""
    return lambda step: 1 + (to - 1) * min(max(step - start, 0) / (end - start), 1)


@pytest.mark.parametrize("to", [0.85, 1.4], ids=["host-speeds-up", "host-slows-down"])
def test_host_drift_within_the_window_is_judged_within_each_step(to):
    # A 1.5x rank while the host's speed moves by 15-40% within the window. A reference of
    # window-long medians trails the drift (a 1.5x rank on a host 15% faster scores
    # 1 / (1.5 x 0.85) = 0.78, above the threshold); one at the host's speed of the last
    # minSteps steps does not. The drift alone flags no one.
    timings = steps(60, 4, slow={2: 1.5}, slow_from=30, host=ramp(25, 35, to))
    assert flagged(timings) == {2: 30 + POLICY.min_steps - 1}
    assert flagged(steps(60, 4, host=ramp(25, 45, to))) == {}


def test_uneven_shares_are_not_slowness():
    # Rank 0 trains on three times the samples: three times the busy time, same speed.
    timings = steps(40, 2, samples=(12, 4))
    assert flagged(timings) == {}


def test_victims_wait_but_only_the_slow_rank_computes_slowly():
    timings = steps(40, 3, slow={0: 2.0}, slow_from=10)
    scores = stragglers.assess(timings, POLICY)
    assert [s.rank for s in scores if s.below] == [0]
    assert stragglers.victims(scores, {0}, timings) == [1, 2]


def test_fail_slow_score_tells_a_rank_that_slowed_from_one_always_slow():
    slowed = {s.rank: s.self_score for s in stragglers.assess(steps(40, 2, slow={1: 2.0}, slow_from=30), POLICY)}
    always = {s.rank: s.self_score for s in stragglers.assess(steps(40, 2, slow={1: 2.0}, slow_from=0), POLICY)}
    assert slowed[1] < 0.6 and 0.9 < always[1] < 1.1


def test_hysteresis_a_rank_between_threshold_and_clearing_level_stays_flagged():
    # 2x slow for 20 steps, then 1.2x: above the threshold (0.83 > 0.75), below the
    # clearing level (0.875): still flagged; at full speed it is cleared.
    t = steps(50, 2, slow={1: 2.0}, slow_from=1) + steps(20, 2, first=51, slow={1: 1.2}, seed=1, noise=0.02)
    (one,) = [s for s in stragglers.assess(t, POLICY) if s.rank == 1]
    assert one.below and not one.recovered
    t += steps(20, 2, first=71, seed=2, noise=0.02)
    (one,) = [s for s in stragglers.assess(t[-64:], POLICY) if s.rank == 1]
    assert one.recovered


def test_balanced_shares_follow_measured_speed():
    scores = stragglers.assess(steps(40, 4, slow={3: 2.0}, slow_from=1, noise=0.0), POLICY)
    shares = stragglers.balanced_shares(scores, data=4, sequence=1)
    assert shares == pytest.approx([8 / 7, 8 / 7, 8 / 7, 4 / 7], abs=2e-3)
    assert stragglers.balanced_shares(scores, data=2, sequence=2) == pytest.approx([4 / 3, 2 / 3], abs=2e-3)


def test_shares_dead_band():
    assert not stragglers.shares_differ([1.05, 0.95], None)
    assert stragglers.shares_differ([1.2, 0.8], None)
    assert not stragglers.shares_differ([1.2, 0.8], [1.19, 0.81])


def review(timings, flagged=(), shares=None, mitigated=None, action="rebalance"):
    policy = StragglerPolicySpec(action=action)
    return stragglers.review(policy, list(flagged), shares, mitigated, timings, timings[-1].step, data=2, sequence=1, nodes={0: "a", 1: "b"})


def test_review_escalates_rebalance_then_replace_after_the_cool_down():
    timings = steps(40, 2, slow={1: 1.5}, slow_from=20)
    first = review(timings, action="replace")
    (f,) = first.flagged
    assert f.rank == 1 and f.node == "b" and f.action is StragglerAction.REBALANCE
    assert first.shares == pytest.approx([1.2, 0.8], abs=0.02) and first.replace is None
    # Within the cool-down nothing more happens, even though the rank is still slow.
    soon = review(steps(40, 2, first=11, slow={1: 1.5}, slow_from=1), first.flagged, first.shares, mitigated=40, action="replace")
    assert soon.shares is None and soon.replace is None
    later = review(steps(40, 2, first=31, slow={1: 1.5}, slow_from=1), first.flagged, first.shares, mitigated=40, action="replace")
    assert later.replace is not None and later.replace.rank == 1


def test_review_report_only_flags():
    got = review(steps(40, 2, slow={1: 1.5}, slow_from=20), action="report")
    assert [f.rank for f in got.flagged] == [1] and got.shares is None
    assert [n.reason for n in got.notices] == ["StragglerDetected"]


def test_review_clears_a_recovered_rank_once():
    before = [StragglerStatus(rank=1, node="b", score=0.6, since_step=10, action=StragglerAction.REPORT)]
    got = review(steps(40, 2), before, action="report")
    assert got.flagged == [] and [n.reason for n in got.notices] == ["StragglerCleared"]


def test_short_steps_need_min_seconds_of_evidence_not_only_min_steps():
    fast = [dataclasses.replace(t, compute=tuple(c / 10 for c in t.compute), wait=tuple(w / 10 for w in t.wait), busy=tuple(b / 10 for b in t.busy)) for t in steps(64, 2, slow={1: 1.5}, slow_from=30)]
    # 0.02 s steps: a burst of 5 slow steps is 0.15 s, far below minSeconds (1 s) ...
    burst = fast[:35] + [dataclasses.replace(t, busy=(t.busy[0], t.busy[0])) for t in fast[35:]]
    assert flagged(burst) == {}
    # ... a rank that stays slow is flagged once its slow steps add up to a second.
    got = flagged(fast)
    assert list(got) == [1] and 30 + 28 <= got[1] <= 30 + 33  # about 1 s / 0.03 s per slow step
