"""An elastic TrainingJob sizes its generation to the ready GPU nodes that match its group;
a rigid one asks for all its pods and leaves placement to the scheduler (pods that cannot
run stay Pending and say Unschedulable)."""

from __future__ import annotations

import pytest

from .kubeapi import PODS, add_node, create_job, eventually, job_status, live, running_operator, tiny_job

pytestmark = pytest.mark.cluster

H100 = {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}
GROUP = {"name": "worker", "replicas": 4, "resources": {"limits": {"nvidia.com/gpu": 1}}}


async def test_elastic_job_fits_the_ready_gpu_nodes(cluster):
    await add_node(cluster, f"{cluster.namespace}-gpu-a", gpus=2, labels=H100)
    async with running_operator(cluster):
        await create_job(cluster, tiny_job(workers=[GROUP], elastic={"minReplicas": 2, "maxReplicas": 4}))
        await eventually(lambda: job_status(cluster).get("worldSize") == 2, what="world size 2 on one 2-GPU node")
        # The status names the generation before its pods are made (intent first).
        await eventually(lambda: sorted(live(cluster, PODS)) == ["tiny-g1-worker-0", "tiny-g1-worker-1"], what="its 2 pods")


async def test_rigid_job_asks_for_all_its_pods(cluster):
    await add_node(cluster, f"{cluster.namespace}-gpu-a", gpus=2, labels=H100)
    async with running_operator(cluster):
        await create_job(cluster, tiny_job(workers=[GROUP]))
        await eventually(lambda: len(live(cluster, PODS)) == 4, what="all 4 pods")
        assert job_status(cluster).get("worldSize") in (None, 4)
        ranks = await eventually(lambda: len(job_status(cluster).get("ranks", [])) == 4 and job_status(cluster)["ranks"], what="4 ranks")
        await eventually(lambda: all("Unschedulable" in r.get("message", "") for r in job_status(cluster)["ranks"]), what="the scheduler's verdict")
        assert all(r["state"] == "Pending" for r in ranks)
