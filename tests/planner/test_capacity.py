"""Elastic capacity on Kubernetes: pods per group that fit on ready, matching GPU nodes,
and the plan an elastic (or rigid) job gets for them."""

from __future__ import annotations

from shardwright.operator.planner import inventory_from_nodelist, plan_for_capacity
from shardwright.operator.planner.capacity import group_limits

from tests.controller.driver import spec


def node(name: str, gpus: int, product: str = "NVIDIA-H100-80GB-HBM3", ready: bool = True, **labels: str) -> dict:
    return {
        "metadata": {"name": name, "labels": {"nvidia.com/gpu.product": product, **labels}},
        "status": {"allocatable": {"nvidia.com/gpu": str(gpus)},
                   "conditions": [{"type": "Ready", "status": "True" if ready else "False"}]},
    }


def gpu_job(**edits):
    group = {"name": "worker", "replicas": 4, "ranksPerReplica": 2, "resources": {"limits": {"nvidia.com/gpu": 2}}}
    return spec(**{"workers": [group], "data.globalBatch": 16, **edits})


def test_pods_fit_on_ready_matching_nodes_only():
    inventory = inventory_from_nodelist({"items": [
        node("a", 8), node("b", 4, ready=False), node("c", 3), node("d", 8, product="NVIDIA-L40S", pool="other"),
    ]})
    assert group_limits(gpu_job(), inventory) == {"worker": 4 + 1 + 4}
    selective = gpu_job(**{"workers": [{"name": "worker", "replicas": 4, "ranksPerReplica": 2, "gpuType": "NVIDIA-L40S",
                                        "resources": {"limits": {"nvidia.com/gpu": 2}}}]})
    assert group_limits(selective, inventory) == {"worker": 4}


def test_groups_without_gpus_have_no_limit():
    cpu = spec(workers=[{"name": "worker", "replicas": 2, "device": "cpu"}])
    assert group_limits(cpu, inventory_from_nodelist({"items": [node("a", 8)]})) == {}


def test_a_gpu_group_without_explicit_resources_counts_one_gpu_per_rank():
    job = spec(workers=[{"name": "worker", "replicas": 4, "ranksPerReplica": 2}], **{"data.globalBatch": 16})
    assert group_limits(job, inventory_from_nodelist({"items": [node("a", 8), node("b", 3)]})) == {"worker": 4 + 1}


def test_elastic_job_shrinks_to_the_nodes_left_and_grows_back():
    job = gpu_job(elastic={"minReplicas": 2, "maxReplicas": 4})
    one_node = group_limits(job, inventory_from_nodelist({"items": [node("a", 4)]}))
    assert plan_for_capacity(job, None, one_node).world_size == 4  # 2 pods x 2 ranks
    two_nodes = group_limits(job, inventory_from_nodelist({"items": [node("a", 4), node("b", 4)]}))
    assert plan_for_capacity(job, None, two_nodes).world_size == 8
    assert plan_for_capacity(job, None, {"worker": 1}) is None  # below minReplicas


def test_rigid_job_waits_instead_of_running_smaller():
    job = gpu_job()
    assert plan_for_capacity(job, None, {"worker": 3}) is None
    assert plan_for_capacity(job, None, {"worker": 9}).world_size == 8


def test_avoided_nodes_hold_none_of_the_jobs_pods():
    job = gpu_job(elastic={"minReplicas": 2, "maxReplicas": 4})
    inventory = inventory_from_nodelist({"items": [node("a", 4), node("b", 4)]})
    assert group_limits(job, inventory, avoid=["b"]) == {"worker": 2}
    assert plan_for_capacity(job, None, group_limits(job, inventory, avoid=["b"])).world_size == 4
    assert plan_for_capacity(job, None, group_limits(job, inventory, avoid=["a", "b"])) is None  # waits for capacity
