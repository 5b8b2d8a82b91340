"""The scheduler's plan: decodes first, then prefill chunks within the budget; preemption."""

from __future__ import annotations

import pytest

from shardwright.workers.serve.config import EngineConfig
from shardwright.workers.serve.request import Request, RequestStatus, SamplingParams
from shardwright.workers.serve.scheduler import Scheduler, SchedulerOutput


def _scheduler(**kw) -> Scheduler:
    return Scheduler(EngineConfig(**({"block_size": 4, "num_blocks": 64, "max_num_batched_tokens": 8, "max_model_len": 64} | kw)))


def _add(s: Scheduler, rid: str, n: int, max_tokens: int = 8) -> Request:
    r = Request(rid, list(range(1, n + 1)), SamplingParams(max_tokens=max_tokens))
    s.add_request(r)
    return r


def _step(s: Scheduler) -> SchedulerOutput:
    plan = s.schedule()
    s.update_from_output(plan, {c.request_id: 7 for c in plan.chunks if c.sample})
    return plan


def _shape(plan: SchedulerOutput) -> list[tuple[str, int, int, bool]]:
    return [(c.request_id, c.start, len(c.token_ids), c.sample) for c in plan.chunks]


def test_decodes_go_first_and_the_rest_of_the_budget_prefills_a_chunk():
    s = _scheduler(enable_prefix_caching=False)
    _add(s, "a", 3)
    _add(s, "b", 4)
    assert _shape(_step(s)) == [("a", 0, 3, True), ("b", 0, 4, True)]
    _add(s, "c", 20)
    assert _shape(_step(s)) == [("a", 3, 1, True), ("b", 4, 1, True), ("c", 0, 6, False)]
    # c is running now: it keeps its place behind the decodes and takes the next chunk.
    assert _shape(_step(s)) == [("a", 4, 1, True), ("b", 5, 1, True), ("c", 6, 6, False)]
    assert _shape(_step(s)) == [("a", 5, 1, True), ("b", 6, 1, True), ("c", 12, 6, False)]
    assert _shape(_step(s)) == [("a", 6, 1, True), ("b", 7, 1, True), ("c", 18, 2, True)]


def test_without_chunking_a_prompt_waits_for_a_budget_that_holds_it_whole():
    s = _scheduler(enable_prefix_caching=False, enable_chunked_prefill=False, max_num_batched_tokens=64)
    _add(s, "a", 3, max_tokens=4)
    _step(s)
    _add(s, "b", 64 - 2, max_tokens=1)
    # 1 decode + 62 prompt tokens fit 64; with two decodes running they would not.
    assert _shape(_step(s)) == [("a", 3, 1, True), ("b", 0, 62, True)]


def test_max_num_seqs_caps_the_running_batch():
    s = _scheduler(max_num_seqs=2, max_num_batched_tokens=32)
    for rid in "abc":
        _add(s, rid, 2)
    assert [c.request_id for c in _step(s).chunks] == ["a", "b"]
    assert s.num_waiting == 1


def test_a_full_cache_preempts_the_last_admitted_and_admits_nobody_that_iteration():
    # 6 blocks of 4 = 24 slots; two 8-token prompts use 4 blocks, their decodes grow them.
    s = _scheduler(num_blocks=6, max_model_len=24, max_num_batched_tokens=24, enable_prefix_caching=False)
    a, b = _add(s, "a", 8, max_tokens=12), _add(s, "b", 8, max_tokens=12)
    _step(s)
    _add(s, "c", 2)
    plans = [_step(s) for _ in range(5)]
    preempting = next(p for p in plans if p.preempted)
    assert preempting.preempted == ("b",)
    assert [c.request_id for c in preempting.chunks] == ["a"]
    assert b.status is RequestStatus.PREEMPTED and b.num_computed_tokens == 0 and b.num_preemptions == 1
    assert s.waiting[0] is b  # back at the head: it goes before c


def test_a_prompt_with_no_room_for_output_is_refused():
    s = _scheduler()
    with pytest.raises(ValueError, match="the prompt has 64 tokens; this model takes at most 63"):
        _add(s, "a", 64)


def test_abort_frees_blocks_and_tells_the_runner():
    s = _scheduler()
    _add(s, "a", 10)
    _step(s)
    assert s.kv.usage > 0
    s.abort("a")
    assert s.kv.usage == 0 and not s.has_unfinished()
    assert s.schedule().finished == ("a",)


def test_engine_limits_are_checked():
    with pytest.raises(ValueError, match=r"num_blocks \* block_size \(4 \* 4\) must hold max_model_len \(64\)"):
        EngineConfig(num_blocks=4, block_size=4, max_model_len=64)
    with pytest.raises(ValueError, match="without chunked prefill max_num_batched_tokens"):
        EngineConfig(enable_chunked_prefill=False, max_num_batched_tokens=8, max_model_len=64)
