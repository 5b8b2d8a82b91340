"""NodeList -> inventory: GPU counts, labels with their documented defaults, the catalog."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from shardwright.operator.planner import DEFAULT_CATALOG, InventorySettings, NicClass, UnknownGpu, inventory_from_nodelist

from .clusters import node, nodelist

REPO = Path(__file__).resolve().parents[2]


def test_example_nodelist_reads_every_gpu_node():
    inv = inventory_from_nodelist(yaml.safe_load((REPO / "examples/nodes/mixed.yaml").read_text()))
    assert inv.gpus == 48 and inv.gpu_types == ("A100-80GB", "H100", "L40S")
    l40s = inv.node("l40s-0")
    assert l40s.nic is NicClass.ETHERNET and l40s.nic_gbps == 100 and l40s.block == "rack-c"
    assert l40s.gpu_memory_bytes == 46068 * 2**20  # the GFD memory label beats the catalog


def test_allocatable_wins_over_the_count_label_and_unusable_nodes_are_left_out():
    busy = node("a", "H100", gpus=8)
    busy["status"]["allocatable"]["nvidia.com/gpu"] = "6"
    cordoned = node("b", "H100", unschedulable=True)
    not_ready = node("c", "H100")
    not_ready["status"]["conditions"] = [{"type": "Ready", "status": "False"}]
    cpu_only = {"metadata": {"name": "d", "labels": {}}, "status": {"allocatable": {"cpu": "8"}}}
    inv = inventory_from_nodelist(nodelist(busy, cordoned, not_ready, cpu_only))
    assert [(n.name, n.gpus) for n in inv.nodes] == [("a", 6)]


def test_label_names_are_settings_and_missing_nic_labels_default_to_ethernet():
    doc = node("a", "A100")
    labels = doc["metadata"]["labels"]
    labels["example.com/rack"] = labels.pop("shardwright.io/rack")
    del labels["shardwright.io/nic"], labels["shardwright.io/nic-gbps"]
    inv = inventory_from_nodelist(nodelist(doc), InventorySettings(block_label="example.com/rack"))
    a = inv.nodes[0]
    assert a.block == "r1" and a.nic is NicClass.ETHERNET and a.nic_gbps == InventorySettings().default_nic_gbps


def test_catalog_matches_products_and_is_extended_by_helm_values():
    assert DEFAULT_CATALOG.lookup("NVIDIA-A100-SXM4-40GB").name == "A100-40GB"
    assert DEFAULT_CATALOG.lookup("NVIDIA-H100-80GB-HBM3").name == "H100"
    with pytest.raises(UnknownGpu, match="planner.gpuCatalog"):
        DEFAULT_CATALOG.lookup("NVIDIA-GB200")
    extended = DEFAULT_CATALOG.extended({"GB200": {"tflops": 1100, "hbmGiB": 186, "hbmGBps": 8000, "linkGBps": 900, "aliases": ["gb200"]}, "L40S": {"tflops": 150}})
    assert extended.lookup("NVIDIA-GB200").hbm_gib == 186
    assert extended.lookup("NVIDIA-L40S").tflops == 150 and extended.lookup("NVIDIA-L40S").hbm_gib == 48
    with pytest.raises(ValueError, match="needs"):
        DEFAULT_CATALOG.extended({"X1": {"tflops": 10}})
