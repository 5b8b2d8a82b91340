"""An elastic TrainingJob on the mock cluster sizes its generation to the ready GPU nodes
that match its group; a rigid one asks for all its pods and leaves placement to the
scheduler (pods that cannot run stay Pending and say Unschedulable)."""

from __future__ import annotations

from .mockapi import PODS, api, create_job, eventually, job_status, live, running_operator, tiny_job


def gpu_node(name: str, gpus: int) -> dict:
    return {
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "labels": {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}},
        "status": {"allocatable": {"nvidia.com/gpu": str(gpus)}, "conditions": [{"type": "Ready", "status": "True"}]},
    }


GROUP = {"name": "worker", "replicas": 4, "resources": {"limits": {"nvidia.com/gpu": 1}}}


async def test_elastic_job_fits_the_ready_gpu_nodes(cluster):
    await api(cluster, "POST", "/api/v1/nodes", gpu_node("gpu-a", 2))
    async with running_operator():
        await create_job(cluster, tiny_job(workers=[GROUP], elastic={"minReplicas": 2, "maxReplicas": 4}))
        await eventually(lambda: job_status(cluster).get("worldSize") == 2, what="world size 2 on one 2-GPU node")
        assert sorted(live(cluster, PODS)) == ["tiny-g1-worker-0", "tiny-g1-worker-1"]


async def test_rigid_job_asks_for_all_its_pods(cluster):
    await api(cluster, "POST", "/api/v1/nodes", gpu_node("gpu-a", 2))
    async with running_operator():
        await create_job(cluster, tiny_job(workers=[GROUP]))
        await eventually(lambda: len(live(cluster, PODS)) == 4, what="all 4 pods")
        assert job_status(cluster).get("worldSize") in (None, 4)
