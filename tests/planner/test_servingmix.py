"""The serving GPU mix (Mélange): a replica's capacity at the SLO from the roofline model,
the branch and bound against brute force, and the pool's plan on a mixed cluster."""

from __future__ import annotations

import itertools

import pytest

from shardwright.operator.api.trainingjob import ModelSpec
from shardwright.operator.planner.catalog import DEFAULT_CATALOG
from shardwright.operator.planner.servingmix import Available, Bucket, Option, cheapest, options, plan
from shardwright.operator.planner.servingperf import (
    Capacity, PerfSettings, Replica, ServedModel, capacity, iteration_seconds, prefill_seconds,
)
from shardwright.operator.planner.simplex import minimize
from shardwright.operator.planner.workload import Workload

GPU = DEFAULT_CATALOG.types


def served(preset: str, bytes_per_value: int = 2) -> ServedModel:
    return ServedModel.of(Workload.of_model(ModelSpec(preset=preset).resolve()), bytes_per_value)


LLAMA_8B = served("llama-8b")


def test_the_served_model_has_llama_3_8bs_size_and_kv():
    assert LLAMA_8B.params == pytest.approx(8.03e9, rel=0.01)
    assert LLAMA_8B.kv_bytes_per_token == 2 * 32 * 1024 * 2  # K and V, 32 layers, 8 KV heads x 128, bf16


def test_decode_is_bound_by_bandwidth_alone_and_by_compute_in_large_batches():
    h100 = Replica(GPU["H100"])
    s = PerfSettings()
    assert iteration_seconds(LLAMA_8B, h100, 1, 100, s) == pytest.approx((LLAMA_8B.weight_bytes + 100 * LLAMA_8B.kv_bytes_per_token) / 3350e9)
    assert prefill_seconds(LLAMA_8B, h100, 1000, s) == pytest.approx((2 * LLAMA_8B.params * 1000 + 2 * 32 * 1000**2 * 4096) / 600e12)
    assert iteration_seconds(LLAMA_8B, Replica(GPU["H100"], 2), 1, 100, s) == pytest.approx(iteration_seconds(LLAMA_8B, h100, 1, 100, s) / 1.8)


def test_capacity_is_the_largest_batch_within_the_slo_and_memory():
    l40s, s = Replica(GPU["L40S"]), PerfSettings()
    got = capacity(LLAMA_8B, l40s, 512, 256, 0.05, None, s)
    assert got.tpot_s <= 0.05
    t = iteration_seconds(LLAMA_8B, l40s, got.batch + 1, 512 + 128, s)
    over_slo = t + (got.batch + 1) * prefill_seconds(LLAMA_8B, l40s, 512, s) / 256 > 0.05
    over_memory = (got.batch + 1) * 768 * LLAMA_8B.kv_bytes_per_token > l40s.kv_room(LLAMA_8B, s)
    assert over_slo or over_memory or got.batch == s.max_batch
    assert got.requests_per_second == pytest.approx(0.9 * got.batch / (256 * iteration_seconds(LLAMA_8B, l40s, got.batch, 640, s) + got.batch * prefill_seconds(LLAMA_8B, l40s, 512, s)))
    # A tighter target admits a smaller batch and fewer requests; none meets an impossible one.
    tighter = capacity(LLAMA_8B, l40s, 512, 256, 0.03, None, s)
    assert tighter.batch < got.batch and tighter.requests_per_second < got.requests_per_second
    assert capacity(LLAMA_8B, l40s, 512, 256, 0.001, None, s) is None
    assert capacity(LLAMA_8B, l40s, 7000, 500, None, 0.05, s) is None  # the prompt alone takes longer than the TTFT target


def test_a_model_larger_than_the_gpu_needs_tensor_parallel_replicas():
    llama_70b = served("llama-70b")
    assert capacity(llama_70b, Replica(GPU["H100"]), 128, 64, 0.1, None) is None
    assert capacity(llama_70b, Replica(GPU["H100"], 4), 128, 64, 0.1, None) is not None
    shapes = {o.replica.label for o in options(llama_70b, [Available(GPU["H100"], 16, 8)], [Bucket(128, 64, 1.0)], 0.1, None)}
    assert shapes == {"H100 x2", "H100 x4", "H100 x8"}


def made_up(caps: list[list[float | None]], costs: list[float]) -> list[Option]:
    """Options with given capacities (req/s per bucket) and costs, of distinct made-up GPU types."""
    from shardwright.operator.planner.catalog import GpuType

    out = []
    for i, (row, cost) in enumerate(zip(caps, costs)):
        gpu = GpuType(f"g{i}", 1, 1, 1, 1, cost)
        out.append(Option(Replica(gpu), tuple(None if c is None else Capacity(c, 1, 0.0, 0.0) for c in row)))
    return out


def brute_force(opts: list[Option], buckets: list[Bucket], limit: int) -> float | None:
    """The cheapest integer counts by enumeration, each checked for a feasible split of the traffic."""
    best = None
    k = len(opts)
    for counts in itertools.product(range(limit + 1), repeat=k):
        cost = sum(o.replica.cost_per_hour * n for o, n in zip(opts, counts))
        if best is not None and cost >= best:
            continue
        pairs = [(i, b) for i in range(k) for b in range(len(buckets)) if opts[i].capacities[b] is not None]
        rows = [([1.0 if pb == b else 0.0 for _, pb in pairs], "==", bucket.rate) for b, bucket in enumerate(buckets)]
        rows += [([1.0 / opts[i].capacities[b].requests_per_second if pi == i else 0.0 for pi, b in pairs], "<=", float(counts[i])) for i in range(k)]
        if minimize([0.0] * len(pairs), rows) is not None:
            best = cost
    return best


@pytest.mark.parametrize("case", [
    # (capacities per option and bucket, costs, rates)
    ([[10, 2], [30, 9]], [0.2, 1.0], [5, 1]),  # small type for short requests, large for long: mixed
    ([[10, None], [30, 9]], [0.2, 1.0], [25, 4]),  # the small one cannot serve long requests
    ([[4, 4], [10, 10], [25, 25]], [0.15, 0.35, 1.0], [13, 0]),  # pure granularity
    ([[12, 3, 1], [20, 8, 2], [50, 20, 6]], [0.12, 0.4, 1.0], [7, 3, 2]),
])
def test_branch_and_bound_finds_the_brute_force_optimum(case):
    caps, costs, rates = case
    opts = made_up(caps, costs)
    buckets = [Bucket(1, 1, r) for r in rates]
    mix = cheapest(opts, buckets, {})
    assert mix is not None and mix.proven
    assert mix.cost_per_hour == pytest.approx(brute_force(opts, buckets, 6))
    # The split serves every bucket in full, and loads no replica past its capacity.
    for b, bucket in enumerate(buckets):
        assert sum(row[b] for row in mix.served) == pytest.approx(bucket.rate)
    for (o, n), row in zip(mix.counts, mix.served):
        assert sum(r / o.capacities[b].requests_per_second for b, r in enumerate(row) if r) <= n + 1e-6


def test_the_clusters_gpus_bound_the_mix():
    opts = made_up([[10], [10]], [0.1, 0.3])
    buckets = [Bucket(1, 1, 35.0)]
    assert [n for _, n in cheapest(opts, buckets, {}).counts] == [4]
    limited = cheapest(opts, buckets, {"g0": 2})  # two of the cheap ones, the rest of the expensive
    assert [(o.replica.gpu.name, n) for o, n in limited.counts] == [("g0", 2), ("g1", 2)]
    assert cheapest(opts, buckets, {"g0": 1, "g1": 1}) is None


def test_the_mix_never_costs_more_than_the_cheapest_single_type_and_beats_it_on_mixed_traffic():
    available = [Available(GPU[name], 32, 8) for name in ("L4", "A10G", "L40S", "A100-80GB", "H100")]
    buckets = [Bucket(128, 64, 3.0), Bucket(512, 256, 1.8), Bucket(2048, 256, 0.9), Bucket(7000, 500, 0.3)]
    p = plan(LLAMA_8B, available, buckets, 0.05, 2.0)
    gpu, single = p.cheapest_single
    assert p.best.cost_per_hour <= single.cost_per_hour
    assert len({o.replica.gpu.name for o, _ in p.best.counts}) > 1 and p.best.cost_per_hour < single.cost_per_hour
