"""GPUs and the RDMA network from the plan, on the real control plane: the operator asks for
one GPU per rank, selects the group's GPU product and adds the RDMA devices, Multus networks
and IPC_LOCK the group asks for; the real scheduler binds the pod to the one node where all
of that fits, and the API server accepts the pod as rendered. Contradictions are refused
at admission (tests/api/cases.py runs each through ``shardwright validate``; the webhook
calls the same function)."""

from __future__ import annotations

import asyncio

import pytest

from shardwright.operator.api.devices import GPU_PRODUCT_LABEL, NETWORKS_ANNOTATION

from .kubeapi import NODES, PODS, Cluster, create_job, eventually, live, path, running_operator, tiny_job

pytestmark = pytest.mark.cluster

H100, A100 = "NVIDIA-H100-80GB-HBM3", "NVIDIA-A100-SXM4-80GB"
RDMA = "rdma/hca_shared_devices_a"


async def schedulable_node(c: Cluster, name: str, product: str, **extended: int) -> str:
    """A Ready node with room for the operator's pods (CPU, memory, pod slots) and the
    ``extended`` resources (``nvidia_gpu=2`` is ``nvidia.com/gpu: 2``), labelled with its GPU
    ``product`` as GPU feature discovery labels it. No kubelet: pods bound there stay Pending."""
    resources = {"cpu": "16", "memory": "64Gi", "pods": "110"} | {_resource(k): str(v) for k, v in extended.items()}
    status = {"capacity": resources, "allocatable": resources, "conditions": [{"type": "Ready", "status": "True", "reason": "Test"}]}
    node = {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "labels": {GPU_PRODUCT_LABEL: product}}}
    await asyncio.to_thread(c.api.request, "POST", path(NODES), node)
    c.made.append((NODES, name))
    await asyncio.to_thread(c.api.merge, path(NODES, name=name, sub="status"), {"status": status})
    return name


def _resource(keyword: str) -> str:
    return {"nvidia_gpu": "nvidia.com/gpu", "rdma": RDMA}[keyword]


async def test_the_scheduler_binds_the_pod_where_its_product_gpus_and_rdma_fit(cluster):
    ns = cluster.namespace
    await schedulable_node(cluster, f"{ns}-a100", A100, nvidia_gpu=8, rdma=4)          # another product
    await schedulable_node(cluster, f"{ns}-h100-one-gpu", H100, nvidia_gpu=1, rdma=4)  # too few GPUs
    await schedulable_node(cluster, f"{ns}-h100-no-rdma", H100, nvidia_gpu=8)          # no RDMA device
    fits = await schedulable_node(cluster, f"{ns}-h100", H100, nvidia_gpu=2, rdma=1)
    group = {"name": "worker", "replicas": 1, "ranksPerReplica": 2, "gpuType": H100, "resources": {"requests": {"cpu": 1, "memory": "2Gi"}},
             "network": {"rdmaResources": {RDMA: 1}, "networks": ["ib-a", "fabric/ib-b@net2"], "ipcLock": True}}
    async with running_operator(cluster):
        await create_job(cluster, tiny_job(workers=[group]))
        pod = await eventually(lambda: next((p for p in live(cluster, PODS).values() if p["spec"].get("nodeName")), None), timeout=60,
                               what="the scheduler's binding of the job's pod")
    assert pod["spec"]["nodeName"] == fits
    (ranks,) = pod["spec"]["containers"]
    assert ranks["resources"]["limits"] == {"nvidia.com/gpu": "2", RDMA: "1"}
    assert ranks["resources"]["requests"] == {"cpu": "1", "memory": "2Gi", "nvidia.com/gpu": "2", RDMA: "1"}
    assert pod["spec"]["nodeSelector"] == {GPU_PRODUCT_LABEL: H100}
    assert pod["metadata"]["annotations"][NETWORKS_ANNOTATION] == "ib-a,fabric/ib-b@net2"
    assert ranks["securityContext"]["capabilities"] == {"drop": ["ALL"], "add": ["IPC_LOCK"]}


async def test_a_cpu_group_asks_for_no_gpu_and_selects_no_product(cluster):
    async with running_operator(cluster):
        await create_job(cluster, tiny_job(workers=[{"name": "worker", "replicas": 2, "device": "cpu", "resources": {"requests": {"cpu": 1}}}]))
        pods = await eventually(lambda: len(p := live(cluster, PODS)) == 2 and p, what="the job's 2 pods")
    for pod in pods.values():
        (ranks,) = pod["spec"]["containers"]
        assert ranks["resources"] == {"requests": {"cpu": "1"}} and "nodeSelector" not in pod["spec"]
