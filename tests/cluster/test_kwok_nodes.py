"""KWOK nodes for scheduling and scale: the shapes of examples/nodes/mixed.yaml become Ready
GPU nodes whose labels and capacity the planner reads back as it reads the file, and the
real scheduler places GPU pods on them by product."""

from __future__ import annotations

import pytest
import yaml

from e2e.cluster.session import ROOT
from shardwright.operator.planner import inventory_from_nodelist
from tests.support.cluster import apply, get_json, wait_for

ROOT_EXAMPLES = ROOT / "examples"

pytestmark = pytest.mark.cluster


def ready(node: dict) -> bool:
    return any(c["type"] == "Ready" and c["status"] == "True" for c in node.get("status", {}).get("conditions", []))


def test_kwok_nodes_are_ready_and_the_planner_reads_them_as_the_file(kube, kwok_nodes):
    listed = wait_for(lambda: (items := [n for n in get_json(kube, "get", "nodes", "-l", "type=kwok")["items"] if ready(n)])
                      and len(items) == len(kwok_nodes) and items, 60, "every KWOK node Ready")
    from_file = inventory_from_nodelist(yaml.safe_load((ROOT_EXAMPLES / "nodes" / "mixed.yaml").read_text()))
    from_cluster = inventory_from_nodelist(listed)
    assert sorted(from_cluster.nodes, key=lambda n: n.name) == sorted(from_file.nodes, key=lambda n: n.name)


def test_the_scheduler_places_a_gpu_pod_on_a_matching_kwok_node(kube, namespace, kwok_nodes):
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "a100", "namespace": namespace},
           "spec": {"nodeSelector": {"nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB"},
                    "tolerations": [{"key": "kwok.x-k8s.io/node", "operator": "Exists"}],
                    "containers": [{"name": "c", "image": "x", "resources": {"limits": {"nvidia.com/gpu": "8"}}}]}}
    apply(kube, pod)
    placed = wait_for(lambda: (p := get_json(kube, "-n", namespace, "get", "pod", "a100")).get("status", {}).get("phase") == "Running" and p,
                      60, "pod Running on a KWOK node")
    node = get_json(kube, "get", "node", placed["spec"]["nodeName"])
    assert node["metadata"]["labels"]["nvidia.com/gpu.product"] == "NVIDIA-A100-SXM4-80GB"
