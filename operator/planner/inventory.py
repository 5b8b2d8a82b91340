"""Cluster inventory: the GPU nodes a plan may use, read from a Kubernetes NodeList.

Input is the mapping ``kubectl get nodes -o yaml`` prints (the CLI parses the YAML; this
module does no I/O). GPU count comes from ``status.allocatable["nvidia.com/gpu"]`` (what
the scheduler will actually hand out), falling back to NVIDIA GPU feature discovery's
``nvidia.com/gpu.count``; the product from ``nvidia.com/gpu.product``; topology and NIC from
labels whose names are :class:`InventorySettings` fields. Nodes without GPUs, cordoned
nodes and NotReady nodes are left out.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from enum import StrEnum
from typing import Any

from .catalog import DEFAULT_CATALOG, Catalog, GpuType


class NicClass(StrEnum):
    RDMA = "rdma"
    ETHERNET = "ethernet"


@dataclasses.dataclass(frozen=True)
class InventorySettings:
    """Label names and defaults; read once at start-up (CLI flags / Helm values)."""

    #: GFD label with the GPU product, e.g. NVIDIA-H100-80GB-HBM3.
    product_label: str = "nvidia.com/gpu.product"
    #: GFD label with GPUs per node; used when allocatable does not say.
    count_label: str = "nvidia.com/gpu.count"
    #: GFD label with memory per GPU in MiB; overrides the catalog's HBM size when set.
    memory_label: str = "nvidia.com/gpu.memory"
    #: Extended resource the device plugin advertises.
    gpu_resource: str = "nvidia.com/gpu"
    #: Well-known zone label; nodes in different zones talk over the slowest links.
    zone_label: str = "topology.kubernetes.io/zone"
    #: Rack / leaf-switch block. No Kubernetes standard exists; set it to your fabric's
    #: label (e.g. ``topology.kubernetes.io/rack`` or a cloud's placement-group label).
    block_label: str = "shardwright.io/rack"
    #: NIC class label, value ``rdma`` (InfiniBand / RoCE) or ``ethernet`` (TCP).
    nic_class_label: str = "shardwright.io/nic"
    #: NIC bandwidth label, in Gbit/s for the whole node (all its NICs together).
    nic_gbps_label: str = "shardwright.io/nic-gbps"
    #: NIC class of a node without the label: Ethernet, the conservative guess.
    default_nic_class: NicClass = NicClass.ETHERNET
    #: NIC bandwidth of a node without the label, Gbit/s (a common cloud default).
    default_nic_gbps: float = 100.0


@dataclasses.dataclass(frozen=True)
class Node:
    name: str
    gpu: GpuType
    gpus: int
    #: Usable memory per GPU, bytes (GFD label when present, else the catalog's).
    gpu_memory_bytes: int
    zone: str = ""
    block: str = ""
    nic: NicClass = NicClass.ETHERNET
    nic_gbps: float = 100.0
    #: The product label's value, e.g. NVIDIA-H100-80GB-HBM3 (what ``gpuType`` may name).
    product: str = ""
    labels: Mapping[str, str] = dataclasses.field(default_factory=dict, compare=False, hash=False)

    def matches(self, selector: Mapping[str, str]) -> bool:
        return all(self.labels.get(k) == v for k, v in selector.items())


@dataclasses.dataclass(frozen=True)
class Inventory:
    """GPU nodes sorted by name: the same NodeList always gives the same inventory."""

    nodes: tuple[Node, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "nodes", tuple(sorted(self.nodes, key=lambda n: n.name)))

    @property
    def gpus(self) -> int:
        return sum(n.gpus for n in self.nodes)

    @property
    def gpu_types(self) -> tuple[str, ...]:
        return tuple(sorted({n.gpu.name for n in self.nodes}))

    def node(self, name: str) -> Node:
        return next(n for n in self.nodes if n.name == name)


def local_inventory(ranks: int, catalog: Catalog = DEFAULT_CATALOG) -> Inventory:
    """The embedded default: one machine whose ``ranks`` CPU processes stand in for GPUs."""
    cpu = catalog.lookup("cpu")
    return Inventory((Node("local", cpu, ranks, cpu.hbm_bytes, nic=NicClass.ETHERNET, nic_gbps=10.0),))


def inventory_from_nodelist(
    doc: Mapping[str, Any] | Iterable[Mapping[str, Any]],
    settings: InventorySettings = InventorySettings(),
    catalog: Catalog = DEFAULT_CATALOG,
) -> Inventory:
    """Inventory from a ``NodeList`` mapping (or a bare list of ``Node`` mappings)."""
    items = doc.get("items", []) if isinstance(doc, Mapping) else list(doc)
    nodes = [node for item in items if (node := _node(item, settings, catalog)) is not None]
    return Inventory(tuple(nodes))


def _node(item: Mapping[str, Any], s: InventorySettings, catalog: Catalog) -> Node | None:
    meta = item.get("metadata") or {}
    spec = item.get("spec") or {}
    status = item.get("status") or {}
    labels = {str(k): str(v) for k, v in (meta.get("labels") or {}).items()}
    if spec.get("unschedulable"):
        return None  # cordoned: the scheduler would not place our pods there
    ready = [c for c in status.get("conditions") or [] if c.get("type") == "Ready"]
    if ready and str(ready[0].get("status")) != "True":
        return None
    allocatable = (status.get("allocatable") or {}).get(s.gpu_resource)
    gpus = int(allocatable) if allocatable is not None else int(labels.get(s.count_label, 0))
    product = labels.get(s.product_label)
    if gpus <= 0 or not product:
        return None
    gpu = catalog.lookup(product)
    memory_mib = labels.get(s.memory_label)
    memory = int(memory_mib) * 2**20 if memory_mib else gpu.hbm_bytes
    nic = labels.get(s.nic_class_label, s.default_nic_class)
    return Node(
        name=str(meta.get("name")),
        gpu=gpu,
        gpus=gpus,
        gpu_memory_bytes=memory,
        zone=labels.get(s.zone_label, ""),
        block=labels.get(s.block_label, ""),
        nic=_nic_class(nic, meta.get("name"), s),
        nic_gbps=float(labels.get(s.nic_gbps_label, s.default_nic_gbps)),
        product=product,
        labels=labels,
    )


def _nic_class(value: str, node: str, s: InventorySettings) -> NicClass:
    try:
        return NicClass(str(value).lower())
    except ValueError:
        allowed = ", ".join(c.value for c in NicClass)
        raise ValueError(f"node {node}: label {s.nic_class_label}={value!r}; allowed: {allowed}") from None
