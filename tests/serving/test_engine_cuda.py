"""The engine on a CUDA device gives the tokens the whole-sequence reference gives on the CPU."""

from __future__ import annotations

import copy

import pytest

from shardwright.workers.serve.request import SamplingParams

from .models import engine, generate_alone, prompts, tiny_model

pytestmark = pytest.mark.gpu


def test_batched_chunked_prefix_cached_generations_on_cuda_equal_the_cpu_reference():
    cpu = tiny_model()
    shared = prompts([12], seed=4)[0]
    ps = prompts([3, 17, 30]) + [shared + [1, 2], shared + [3, 4, 5]]
    refs = [generate_alone(cpu, p, 8) for p in ps]
    eng = engine(copy.deepcopy(cpu).to("cuda"), max_num_batched_tokens=7)
    assert eng.generate(ps, SamplingParams(max_tokens=8)) == refs
    assert eng.runner.cache.k[0].is_cuda


def test_bfloat16_on_cuda_runs_and_samples_with_a_seed():
    model = tiny_model().to("cuda").bfloat16()
    params = SamplingParams(max_tokens=6, temperature=0.8, seed=1)
    out = engine(model).generate(prompts([5, 9]), params)
    assert [len(o) for o in out] == [6, 6]
    assert engine(model).generate(prompts([5, 9]), params) == out
