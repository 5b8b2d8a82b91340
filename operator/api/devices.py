"""What a worker group's pods ask of a node besides CPU and memory: GPUs and the RDMA network.

``device: gpu`` (the default) gives each rank one GPU: the operator sets the rank
container's ``nvidia.com/gpu`` request and limit to ``ranksPerReplica`` and selects nodes by
``nvidia.com/gpu.product`` when the group names a ``gpuType``. ``device: cpu`` asks for no
GPU (the gloo ranks of the examples run anywhere). ``network`` adds RDMA devices (extended
resources a device plugin advertises, such as ``rdma/hca_shared_devices_a``), Multus
networks (the ``k8s.v1.cni.cncf.io/networks`` annotation) and the ``IPC_LOCK`` capability
that pinning RDMA memory needs; IPC_LOCK is outside the restricted Pod Security profile, so
asking for it is the user's opt-out of that profile.

:func:`problems` names what contradicts these (a GPU count other than the ranks per pod, a
node selector on another product, a resource or annotation given twice, a template that
drops IPC_LOCK while ``ipcLock`` adds it); ``validation.check_spec`` applies it, so
``shardwright validate`` and the webhook say the same.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from enum import StrEnum
from typing import Annotated, Any

from pydantic import Field

from .base import ApiModel
from .podtemplate import RANK_CONTAINER
from .resources import ALLOWED_NAMES, EXTENDED_PATTERN, HUGEPAGES, MAX_NAMES, QUANTITY_PATTERN, STANDARD, name_problem, value
from . import rules

#: The extended resource NVIDIA's device plugin advertises, one unit per GPU.
GPU_RESOURCE = "nvidia.com/gpu"
#: GPU feature discovery's node label with the GPU product, e.g. NVIDIA-H100-80GB-HBM3.
GPU_PRODUCT_LABEL = "nvidia.com/gpu.product"
#: Multus: the pod annotation listing the extra networks it attaches.
NETWORKS_ANNOTATION = "k8s.v1.cni.cncf.io/networks"
#: The capability RDMA needs to pin (lock) memory for the NIC.
IPC_LOCK = "IPC_LOCK"
#: The most Multus networks a group attaches (bounds the CRD rules' cost).
MAX_NETWORKS = 16
#: A Multus network reference: ``[<namespace>/]<name>[@<interface>]``.
NETWORK_FORM = "a Multus network: [namespace/]name[@interface], lowercase DNS labels and an interface name of at most 15 characters"
NETWORK_PATTERN = r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?/)?[a-z0-9]([-a-z0-9]*[a-z0-9])?(@[A-Za-z0-9][-A-Za-z0-9_.]{0,14})?$"


class Device(StrEnum):
    """What a group's ranks compute on."""

    GPU = "gpu"
    CPU = "cpu"


NetworkName = Annotated[str, Field(min_length=1, max_length=253, pattern=NETWORK_PATTERN)]
DeviceCount = Annotated[int, Field(ge=1, le=1024)]


class NetworkSpec(ApiModel):
    """The RDMA network of a group's pods (docs/jobs-on-kubernetes.md, "GPUs and NICs")."""

    rdma_resources: dict[str, DeviceCount] = Field(
        default_factory=dict, max_length=MAX_NAMES,
        json_schema_extra=rules.extra(rules.resource_names(STANDARD, HUGEPAGES, EXTENDED_PATTERN, ALLOWED_NAMES)),
        description="Extended resources of the RDMA device plugin each pod asks for, as request and "
        "limit, e.g. {rdma/hca_shared_devices_a: 1}.",
    )
    networks: list[NetworkName] = Field(
        default_factory=list, max_length=MAX_NETWORKS,
        description="Multus NetworkAttachmentDefinitions to attach, [namespace/]name[@interface]; "
        "they become the pod annotation k8s.v1.cni.cncf.io/networks.",
    )
    ipc_lock: bool = Field(
        default=False,
        description="Add the IPC_LOCK capability to the rank container (RDMA pins memory). It is "
        "outside the restricted Pod Security profile: the namespace must allow it.",
    )


def gpus_per_replica(group: Any) -> int:
    """GPUs one pod of ``group`` gets: one per rank on a GPU group, none on CPU."""
    return group.ranks_per_replica if group.device is Device.GPU else 0


def pod_resources(group: Any) -> dict[str, int]:
    """The extended resources the operator asks for on each pod of ``group`` (request = limit)."""
    gpus = gpus_per_replica(group)
    return ({GPU_RESOURCE: gpus} if gpus else {}) | dict(group.network.rdma_resources)


def problems(path: str, group: Any) -> Iterable[tuple[str, str]]:
    """(field path, message) for what contradicts ``group``'s device and network at ``path``
    (``spec.workers[i]``)."""
    gpus = gpus_per_replica(group)
    for where, quantity in _given(path, group, GPU_RESOURCE):
        if value(quantity) != value(quantity).to_integral_value():
            continue  # not a count at all: resources.problems (or the API server) says so
        if group.device is Device.CPU and value(quantity) != 0:
            yield where, f"a device: cpu group asks for no GPU; remove it, or set device: gpu (got {quantity})"
        elif group.device is Device.GPU and value(quantity) != gpus:
            yield where, (f"must equal ranksPerReplica ({gpus}): each rank gets one GPU; leave it out and the "
                          f"operator sets it, or use device: cpu for ranks without GPUs (got {quantity})")
    if group.gpu_type is not None and group.device is Device.CPU:
        yield f"{path}.gpuType", "only for device: gpu groups; remove it or set device: gpu"
    template = group.template.spec
    for where, selector in ((f"{path}.nodeSelector", group.node_selector), (f"{path}.template.spec.nodeSelector", template.get("nodeSelector"))):
        product = selector.get(GPU_PRODUCT_LABEL) if isinstance(selector, dict) else None
        if group.gpu_type is not None and product is not None and product != group.gpu_type:
            yield f"{where}.{GPU_PRODUCT_LABEL}", (f"contradicts gpuType ({group.gpu_type}), which selects the nodes by "
                                                   f"{GPU_PRODUCT_LABEL}; remove it or make the two equal (got {product})")
    yield from _network(path, group)


def _network(path: str, group: Any) -> Iterable[tuple[str, str]]:
    network, at = group.network, f"{path}.network"
    for name in network.rdma_resources:
        where = f"{at}.rdmaResources.{name}"
        if name == GPU_RESOURCE:
            yield where, f"{GPU_RESOURCE} follows ranksPerReplica (device: gpu); list only RDMA devices here"
            continue
        if name in STANDARD or name.startswith(HUGEPAGES) or name_problem(name):
            yield where, "must be an extended resource <domain>/<name> of the RDMA device plugin, such as rdma/hca_shared_devices_a"
        elif (given := next(iter(_given(path, group, name)), None)) is not None:
            yield given[0], f"set in {where} too; set one of them"
    for i, name in enumerate(network.networks):
        if name in network.networks[:i]:
            yield f"{at}.networks[{i}]", f"duplicate network {name!r}"
    if network.networks and NETWORKS_ANNOTATION in group.template.metadata.annotations:
        yield f"{path}.template.metadata.annotations.{NETWORKS_ANNOTATION}", f"set from {at}.networks too; set one of them"
    if network.ipc_lock:
        context = group.template.container(RANK_CONTAINER).get("securityContext")
        caps = context.get("capabilities") if isinstance(context, dict) else None
        drop = caps.get("drop") if isinstance(caps, dict) else None
        if isinstance(drop, list) and IPC_LOCK in drop:
            yield (f"{_rank_container(path, group)}.securityContext.capabilities.drop",
                   f"drops {IPC_LOCK}, which {at}.ipcLock adds; remove one of them")


def _given(path: str, group: Any, name: str) -> Iterable[tuple[str, str]]:
    """(field path, quantity) wherever ``group`` asks for resource ``name`` itself: its
    ``resources`` or its template's rank container's."""
    for section in ("requests", "limits"):
        if (quantity := getattr(group.resources, section).get(name)) is not None:
            yield f"{path}.resources.{section}.{name}", quantity
    resources = group.template.container(RANK_CONTAINER).get("resources")
    for section in ("requests", "limits"):
        given = resources.get(section) if isinstance(resources, dict) else None
        quantity = given.get(name) if isinstance(given, dict) else None
        # Only what reads as a quantity: anything else is the API server's to refuse.
        if isinstance(quantity, (str, int)) and not isinstance(quantity, bool) and re.fullmatch(QUANTITY_PATTERN, str(quantity)):
            yield f"{_rank_container(path, group)}.resources.{section}.{name}", str(quantity)


def _rank_container(path: str, group: Any) -> str:
    """The path of the template's rank container (called only when it has one)."""
    containers = group.template.spec.get("containers") or []
    index = next(i for i, c in enumerate(containers) if isinstance(c, dict) and c.get("name") == RANK_CONTAINER)
    return f"{path}.template.spec.containers[{index}]"


__all__ = ["Device", "NetworkSpec", "GPU_RESOURCE", "GPU_PRODUCT_LABEL", "NETWORKS_ANNOTATION", "IPC_LOCK",
           "gpus_per_replica", "pod_resources", "problems"]
