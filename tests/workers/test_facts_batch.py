"""How many steps one step-facts all-reduce carries: every rank must pick the same number
from the same sums, short steps share one all-reduce, long steps have their own."""

from shardwright.workers.stepfacts import FACTS_INTERVAL_S, MAX_FACTS_BATCH, facts_batch


def test_long_steps_send_their_facts_alone():
    assert facts_batch([FACTS_INTERVAL_S, 2 * FACTS_INTERVAL_S, 0.3]) == 1


def test_short_steps_share_one_all_reduce_up_to_the_cap():
    assert facts_batch([0.012, 0.013, 0.012, 0.5]) == 4  # 50 ms of 12.5 ms steps; the median, not one slow step, decides
    assert facts_batch([1e-4] * 3) == MAX_FACTS_BATCH
    assert facts_batch([0.0]) == MAX_FACTS_BATCH
