"""The /scale subresource of TrainingJob on the local control plane: ``kubectl scale`` sets
``spec.elastic.replicas`` and the operator restarts a generation at the new size; out of the
elastic bounds, or on a job that is not elastic, the API server refuses with the field's
rule; the scale's status carries the running replicas and the pods' label selector (HPA)."""

from __future__ import annotations

import asyncio
import json

import pytest

from .kubeapi import TJ, add_node, create_job, eventually, get, job_status, pods_of, run_all, running_operator, tiny_job

pytestmark = pytest.mark.cluster
#: One GPU a pod; the node below holds 4 such pods, so capacity never holds the job back here.
GROUP = {"name": "worker", "replicas": 2, "resources": {"limits": {"nvidia.com/gpu": 1}}}


async def kubectl(cluster, *args: str):
    return await asyncio.to_thread(cluster.cp.kubectl, "-n", cluster.namespace, *args, check=False)


async def test_kubectl_scale_resizes_an_elastic_job_within_its_bounds(cluster):
    await add_node(cluster, f"{cluster.namespace}-gpu", gpus=4, labels={"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"})
    async with running_operator(cluster):
        await create_job(cluster, tiny_job(workers=[GROUP], elastic={"minReplicas": 1, "maxReplicas": 4}))
        await eventually(lambda: len(pods_of(cluster, 1)) == 2, what="generation 1")
        await run_all(cluster, 1)
        await eventually(lambda: job_status(cluster).get("phase") == "Running", what="Running")

        out = await kubectl(cluster, "scale", "tj/tiny", "--replicas=3")
        assert out.returncode == 0, out.stderr
        assert get(cluster, TJ, "tiny")["spec"]["elastic"] == {"minReplicas": 1, "maxReplicas": 4, "replicas": 3}
        await eventually(lambda: len(pods_of(cluster, 2)) == 3, timeout=60, what="generation 2 at 3 replicas")
        status = await eventually(lambda: (s := job_status(cluster)).get("generation") == 2 and s, what="status generation 2")
        assert status["worldSize"] == 3 and status["replicas"] == 3 and status["restarts"] == 0
        scale = json.loads((await kubectl(cluster, "get", "--subresource=scale", "tj/tiny", "-o", "json")).stdout)
        assert scale["kind"] == "Scale" and scale["spec"] == {"replicas": 3}
        assert scale["status"] == {"replicas": 3, "selector": "shardwright.io/job=tiny"}

        refused = await kubectl(cluster, "scale", "tj/tiny", "--replicas=5")
        assert refused.returncode != 0
        assert "spec.elastic.replicas must be within [minReplicas, maxReplicas] = [1, 4]; got 5" in refused.stderr, refused.stderr
        assert get(cluster, TJ, "tiny")["spec"]["elastic"]["replicas"] == 3


async def test_kubectl_scale_of_a_job_that_is_not_elastic_is_refused(cluster):
    await create_job(cluster, tiny_job())
    refused = await kubectl(cluster, "scale", "tj/tiny", "--replicas=3")
    assert refused.returncode != 0 and "spec.elastic.minReplicas: Required value" in refused.stderr, refused.stderr
    assert "elastic" not in get(cluster, TJ, "tiny")["spec"]
