"""The search: groups stay in a node, faster GPUs work more, memory limits are named,
the same input gives the same plan, and the closed form agrees with the simulator."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from shardwright.operator.planner import Infeasible, ParallelDims, cost, layout, search
from shardwright.operator.planner.network import NetworkSettings
from shardwright.operator.planner.search import SearchSettings, degree_splits, to_plan
from shardwright.operator.planner.simulate import simulate
from shardwright.operator.planner.workload import Workload

from shardwright.operator.planner import inventory_from_nodelist
from shardwright.operator.planner.search import naive

from .clusters import MIXED, cluster, job, node, random_mixed

#: Relative gap between the closed-form step time and the simulator's. For the plan the
#: search picks on each test cluster (measured: 7-12 %, closed form pessimistic: the
#: simulator re-scoring favours plans the closed form over-rates), and the median over every
#: degree split of the cluster (measured: 0-2 %). Single splits far from the optimum can
#: be off much more (measured worst: 62 %, closed form pessimistic: deep pipelines of a 1B
#: model over 100 Gb Ethernet, where it charges every send at full NIC contention while
#: the simulator's queues interleave sends with compute); that is why the search re-scores
#: its short list with the simulator instead of trusting the closed form's ranking.
PLAN_TOLERANCE = 0.15
MEDIAN_TOLERANCE = 0.05


def test_tensor_and_sequence_groups_stay_inside_a_node_when_they_fit():
    inv = cluster(*MIXED)
    spec = job(48)
    for dims in (ParallelDims(12, tensor=4), ParallelDims(6, tensor=4, sequence=2), ParallelDims(12, sequence=4), ParallelDims(4, tensor=4, pipeline=3)):
        for order in layout.ORDERS:
            slots = layout.arrange(layout.place_pods(spec, inv, order), dims, order)
            for axis in ("tensor", "sequence"):
                for group in dims.groups(axis):
                    inner = dims.tensor * dims.sequence
                    if any(slots[r].node.gpus < inner for r in group):
                        continue  # why: a 4-GPU node cannot hold a group of 8; only groups that fit count
                    assert len({slots[r].node.name for r in group}) == 1, (dims, order, axis, group)
    plan = search(spec, inv).plan
    for axis in ("tensor", "sequence"):
        for group in plan.groups[axis]:
            assert len({plan.ranks[r].node for r in group}) == 1


def test_ranks_per_node_never_exceed_its_gpus():
    inv = cluster(*MIXED)
    for ranks in (48, 40, 20):
        plan = search(job(ranks), inv).plan
        per_node = Counter(r.node for r in plan.ranks)
        assert all(per_node[n.name] <= n.gpus for n in inv.nodes)
        assert len({(r.node, r.group, r.replica, r.local_rank) for r in plan.ranks}) == ranks


def test_faster_gpus_get_proportionally_more_work():
    # Data parallelism only (explicit degrees), compute-bound: a 1B model, big batch, RDMA.
    inv = cluster(*(node(f"h{i}", "H100") for i in range(2)), *(node(f"a{i}", "A100") for i in range(2)), *(node(f"l{i}", "L40S", gpus=8) for i in range(2)))
    plan = search(job(48, preset="llama-1b", auto=False, global_batch=1536, seq_len=2048), inv).plan
    share = {gpu: {r.share for r in plan.ranks if r.gpu == gpu} for gpu in ("H100", "A100-80GB", "L40S")}
    assert all(len(s) == 1 for s in share.values()), share  # one share per GPU type
    h100, a100, l40s = (s.pop() for s in share.values())
    assert h100 > a100 > l40s
    assert h100 / a100 == pytest.approx(600 / 230, rel=0.1)
    assert a100 / l40s == pytest.approx(230 / 200, rel=0.1)
    assert sum(plan.samples) == 1536 and plan.data_shares is not None


def test_uneven_stages_follow_stage_speed():
    plan = search(job(48), cluster(*MIXED)).plan
    assert plan.dims.pipeline > 1
    speed = [plan.ranks[plan.dims.rank(pipeline=p)].gpu for p in range(plan.dims.pipeline)]
    assert len(set(plan.stage_layers)) > 1 and sum(plan.stage_layers) == 32
    assert plan.stage_layers[speed.index("H100")] == max(plan.stage_layers)


def test_infeasible_job_names_the_memory_limit():
    inv = cluster(*(node(f"l{i}", "L40S", gpus=8) for i in range(2)))
    with pytest.raises(Infeasible, match=r"needs \d+ GiB per GPU at tensor=1, pipeline=1.*; L40S has 48"):
        search(job(2, auto=False), inv)
    with pytest.raises(Infeasible, match=r"needs \d+ GiB per GPU .*; L40S has 48"):
        search(job(8, preset="llama-70b"), inv)


def test_too_few_gpus_of_the_requested_type_is_named():
    with pytest.raises(Infeasible, match="'worker' needs 20 pods of 1 GPUs of type H100"):
        search(job(20, gpuType="H100"), cluster(*MIXED))


def test_same_input_same_plan_whatever_the_node_order():
    shuffled = list(MIXED)
    random.Random(3).shuffle(shuffled)
    a, b = search(job(48), cluster(*MIXED)), search(job(48), cluster(*shuffled))
    assert a.plan == b.plan and a.alternatives == b.alternatives


@pytest.mark.parametrize("nodes", [
    MIXED,
    (node("h0", "H100"), node("h1", "H100", nic="ethernet", gbps=200), node("a0", "A100", rack="r2"), node("a1", "A10G", nic="ethernet", gbps=100)),
    (node("a0", "A100", gpus=4), node("a1", "A100", gpus=4, rack="r2"), node("l0", "L40S", gpus=4, nic="ethernet", gbps=100), node("l1", "L40S", gpus=4, nic="ethernet", gbps=100)),
], ids=["h100-a100-l40s", "four-types", "a100-l40s-small"])
def test_closed_form_agrees_with_the_simulator(nodes):
    inv = cluster(*nodes)
    spec = job(inv.gpus, preset="llama-1b", global_batch=128)
    w = Workload.from_spec(spec)
    slots = layout.place_pods(spec, inv)
    gaps = []
    for dims in degree_splits(spec, w, slots, SearchSettings()):
        for order in ("speed", "name"):
            topo = cost.topology(layout.arrange(slots, dims, order), dims, NetworkSettings())
            est = cost.estimate(w, topo, 1, False)
            if not est.feasible:
                continue
            sim = simulate(to_plan(est, topo, w, order), inv, w)
            gaps.append((abs(est.step_seconds / sim.step_seconds - 1), dims.layout, order))
    gaps.sort()
    assert len(gaps) >= 8
    assert gaps[len(gaps) // 2][0] < MEDIAN_TOLERANCE, gaps
    plan = search(spec, inv).plan
    assert plan.predicted_step_seconds == pytest.approx(simulate(plan, inv, w).step_seconds, rel=PLAN_TOLERANCE)
    # The chosen plan carries the simulator's time; it is the simulator's best of the short list.
    assert plan.simulated_step_seconds == pytest.approx(simulate(plan, inv, w).step_seconds, rel=1e-9)


@pytest.mark.parametrize("seed", range(6))
def test_plan_is_never_slower_than_naive_placement(seed):
    inv = inventory_from_nodelist(random_mixed(seed))
    spec = job(inv.gpus, preset="llama-1b", global_batch=128, seq_len=2048)
    w = Workload.from_spec(spec)
    result = search(spec, inv)
    baseline = naive(spec, inv)
    assert baseline is not None and len(inv.gpu_types) >= 2
    planned, obvious = simulate(result.plan, inv, w).step_seconds, simulate(baseline, inv, w).step_seconds
    assert planned <= obvious * (1 + 1e-9), (seed, result.plan.dims.layout, planned, obvious)
