"""Small clusters and jobs for planner tests, built as the API server would print them."""

from __future__ import annotations

import copy

from shardwright.operator.api import parse
from shardwright.operator.planner import inventory_from_nodelist

PRODUCTS = {"H100": "NVIDIA-H100-80GB-HBM3", "A100": "NVIDIA-A100-SXM4-80GB", "L40S": "NVIDIA-L40S", "A10G": "NVIDIA-A10G"}


def node(name: str, gpu: str, gpus: int = 8, nic: str = "rdma", gbps: int = 400, rack: str = "r1", **extra) -> dict:
    labels = {
        "nvidia.com/gpu.product": PRODUCTS[gpu], "nvidia.com/gpu.count": str(gpus),
        "shardwright.io/nic": nic, "shardwright.io/nic-gbps": str(gbps), "shardwright.io/rack": rack,
        "topology.kubernetes.io/zone": "z1",
    }
    doc = {"metadata": {"name": name, "labels": labels}, "status": {"allocatable": {"nvidia.com/gpu": str(gpus)}}}
    for key, value in extra.items():
        doc.setdefault("spec", {})[key] = value
    return doc


def nodelist(*nodes: dict) -> dict:
    return {"apiVersion": "v1", "kind": "NodeList", "items": list(nodes)}


def cluster(*nodes: dict):
    return inventory_from_nodelist(nodelist(*nodes))


#: 2 x 8 H100 (RDMA), 2 x 8 A100 (RDMA), 4 x 4 L40S (Ethernet): 48 GPUs of three types.
MIXED = (
    node("h100-0", "H100", gbps=3200, rack="a"), node("h100-1", "H100", gbps=3200, rack="a"),
    node("a100-0", "A100", gbps=1600, rack="b"), node("a100-1", "A100", gbps=1600, rack="b"),
    *(node(f"l40s-{i}", "L40S", gpus=4, nic="ethernet", gbps=100, rack="c") for i in range(4)),
)

JOB = {
    "apiVersion": "shardwright.io/v1alpha1",
    "kind": "TrainingJob",
    "metadata": {"name": "plan-test"},
    "spec": {
        "model": {"preset": "llama-8b"},
        "data": {"seqLen": 4096, "globalBatch": 256, "microBatch": 1},
        "training": {"steps": 10},
        "parallelism": {"auto": True},
        "workers": [{"name": "worker", "replicas": 48}],
    },
}


def job(ranks: int, preset: str = "llama-8b", auto: bool = True, global_batch: int = 256, seq_len: int = 4096, **group):
    doc = copy.deepcopy(JOB)
    doc["spec"]["model"]["preset"] = preset
    doc["spec"]["data"].update(globalBatch=global_batch, seqLen=seq_len)
    doc["spec"]["parallelism"] = {"auto": auto}
    doc["spec"]["workers"] = [{"name": "worker", "replicas": ranks, **group}]
    return parse(doc).spec


def random_mixed(seed: int) -> dict:
    """A seeded mixed cluster of 8-32 GPUs: 2-3 GPU types, RDMA and Ethernet nodes, two racks."""
    import random

    rng = random.Random(seed)
    types = rng.sample(sorted(PRODUCTS), rng.randint(2, 3))
    items, total, i = [], 0, 0
    target = rng.choice([8, 16, 24, 32])
    while total < target:
        gpus = min(rng.choice([2, 4, 8]), target - total) if target - total >= 2 else 2
        rdma = rng.random() < 0.5
        items.append(node(f"n{seed}-{i}", types[i % len(types)], gpus=gpus, nic="rdma" if rdma else "ethernet",
                          gbps=rng.choice([400, 800]) if rdma else rng.choice([25, 100]), rack=f"r{rng.randint(0, 1)}"))
        total += gpus
        i += 1
    return nodelist(*items)
