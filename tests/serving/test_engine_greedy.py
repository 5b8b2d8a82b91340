"""Batching, chunking, prefix caching and preemption never change an output.

The reference is the same prompt generated alone by ``Transformer.forward`` over the whole
sequence at every step (no KV cache at all); the engine's tokens must equal it exactly.
Models run in float64 so that only a genuine difference, not rounding, could flip an argmax.
"""

from __future__ import annotations

import dataclasses

import pytest

from shardwright.workers.serve.request import SamplingParams

from .models import engine, generate_alone, prompts, tiny_config, tiny_model

MAX_TOKENS = 10
LENGTHS = [3, 9, 17, 30, 41]


@pytest.fixture(scope="module")
def model():
    return tiny_model()


@pytest.fixture(scope="module")
def references(model):
    ps = prompts(LENGTHS)
    return ps, [generate_alone(model, p, MAX_TOKENS) for p in ps]


def _recording(eng):
    """Keep every plan the engine's scheduler makes."""
    plans, schedule = [], eng.scheduler.schedule

    def record():
        plans.append(schedule())
        return plans[-1]

    eng.scheduler.schedule = record
    return plans


@pytest.mark.parametrize("heads,kv_heads", [(4, 4), (4, 2), (4, 1)], ids=["mha", "gqa", "mqa"])
def test_one_request_alone_equals_full_recompute(heads, kv_heads):
    m = tiny_model(tiny_config(heads=heads, kv_heads=kv_heads))
    p = prompts([13])[0]
    assert engine(m).generate([p], SamplingParams(max_tokens=MAX_TOKENS)) == [generate_alone(m, p, MAX_TOKENS)]


def test_outputs_depend_on_the_prompt(references):
    """Guards the comparisons below: a model that ignores its context would pass them."""
    _, refs = references
    assert len({tuple(r) for r in refs}) == len(refs)


def test_batched_without_chunking_equals_alone(model, references):
    ps, refs = references
    eng = engine(model, enable_chunked_prefill=False, max_num_batched_tokens=256, enable_prefix_caching=False)
    plans = _recording(eng)
    assert eng.generate(ps, SamplingParams(max_tokens=MAX_TOKENS)) == refs
    assert max(len(p.chunks) for p in plans) == len(ps)  # all of them in one iteration


@pytest.mark.parametrize("budget", [1, 5, 16])
def test_chunked_prefill_piggybacked_on_decodes_equals_alone(model, references, budget):
    ps, refs = references
    eng = engine(model, max_num_batched_tokens=budget, enable_prefix_caching=False)
    plans = _recording(eng)
    assert eng.generate(ps, SamplingParams(max_tokens=MAX_TOKENS)) == refs
    assert all(p.num_scheduled_tokens <= budget for p in plans)
    assert any(not c.sample for p in plans for c in p.chunks)  # some prompt was cut
    if budget > 1:  # an iteration mixed a decode with a prefill chunk (SARATHI)
        assert any(any(not c.is_prefill for c in p.chunks) and any(c.is_prefill for c in p.chunks) for p in plans)


def test_requests_arriving_while_others_decode_equal_alone(model, references):
    ps, refs = references
    eng = engine(model, max_num_batched_tokens=8)
    requests = []
    for p in ps:  # one new request every two iterations
        requests.append(eng.add_request(p, SamplingParams(max_tokens=MAX_TOKENS)))
        eng.step()
        eng.step()
    while eng.has_unfinished():
        eng.step()
    assert [r.output_token_ids for r in requests] == refs


def test_prefix_cached_generations_equal_alone(model):
    shared = prompts([24], seed=7)[0]
    ps = [shared + tail for tail in prompts([1, 5, 11], seed=8)] + [shared]
    refs = [generate_alone(model, p, MAX_TOKENS) for p in ps]
    eng = engine(model, max_num_batched_tokens=16)
    params = SamplingParams(max_tokens=MAX_TOKENS)
    assert eng.generate(ps[:1], params) == refs[:1]
    requests = [eng.add_request(p, params) for p in ps[1:]]
    while eng.has_unfinished():
        eng.step()
    assert [r.output_token_ids for r in requests] == refs[1:]
    # 24 shared tokens = 6 blocks of 4; the bare prefix must recompute its last block.
    assert [r.num_cached_tokens for r in requests] == [24, 24, 20]


def test_identical_prompts_in_one_iteration_share_blocks_and_outputs(model):
    p = prompts([21], seed=9)[0]
    ref = generate_alone(model, p, MAX_TOKENS)
    eng = engine(model, max_num_batched_tokens=64)
    requests = [eng.add_request(p, SamplingParams(max_tokens=MAX_TOKENS)) for _ in range(3)]
    while eng.has_unfinished():
        eng.step()
    assert [r.output_token_ids for r in requests] == [ref] * 3
    # The later two found the first one's blocks named in the same iteration.
    assert [r.num_cached_tokens for r in requests] == [0, 20, 20]


def test_preempted_and_recomputed_generations_equal_alone(model, references):
    ps, refs = references
    # 26 blocks of 4: not enough for all five at once, so running requests are preempted.
    eng = engine(model, num_blocks=26, max_num_batched_tokens=32, max_model_len=64)
    requests = [eng.add_request(p, SamplingParams(max_tokens=MAX_TOKENS)) for p in ps]
    while eng.has_unfinished():
        eng.step()
    assert [r.output_token_ids for r in requests] == refs
    assert any(r.num_preemptions for r in requests)


def test_stop_token_ends_the_generation_and_is_kept(model, references):
    ps, refs = references
    stop = refs[3][4]
    cut = refs[3].index(stop) + 1
    out = engine(model).generate([ps[3]], SamplingParams(max_tokens=MAX_TOKENS, stop_token_ids=(stop,)))
    assert out == [refs[3][:cut]]


def test_seeded_sampling_does_not_depend_on_the_batch(model, references):
    ps, _ = references
    params = [SamplingParams(max_tokens=MAX_TOKENS, temperature=0.9, top_p=0.9, top_k=20, seed=100 + i) for i in range(len(ps))]
    alone = [engine(model).generate([p], sp)[0] for p, sp in zip(ps, params, strict=True)]
    together = engine(model, max_num_batched_tokens=7).generate(ps, params)
    assert together == alone
    reseeded = engine(model).generate([ps[0]], dataclasses.replace(params[0], seed=1))
    assert reseeded != alone[:1]
