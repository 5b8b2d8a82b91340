"""How many pods of each worker group the cluster can hold right now.

Capacity for elastic jobs on Kubernetes: ready, schedulable GPU nodes (the planner's
``Inventory`` already leaves out cordoned and NotReady ones) that match a group's
``nodeSelector`` and ``gpuType``, each holding ``floor(gpus / gpus per pod)`` of its pods.
GPUs other jobs hold are the scheduler's business: a generation that does not fit stays
Pending and the start-up timeout restarts it with backoff. A group that asks for no GPUs
has no limit here. Only elastic jobs consult this: a rigid job asks for all its pods and
the scheduler places them (a cluster without GPU feature discovery labels has no
inventory, and a rigid job must still run there). Nodes the job avoids (a straggler was
replaced there) count for nothing, so an elastic job sizes its next generation without them.
"""

from __future__ import annotations

from collections.abc import Collection

from shardwright.operator.api import TrainingJobSpec, devices

from .inventory import Inventory, InventorySettings


def gpus_per_pod(group, resource: str) -> int:
    """GPUs one pod of ``group`` asks for: its limit (or request) of the GPU resource, else
    the nvidia.com/gpu the operator sets on its pods (one per rank on a ``device: gpu`` group)."""
    value = group.resources.limits.get(resource) or group.resources.requests.get(resource)
    if value:
        return int(value)
    return devices.gpus_per_replica(group) if resource == devices.GPU_RESOURCE else 0


def group_limits(
    spec: TrainingJobSpec, inventory: Inventory, settings: InventorySettings = InventorySettings(),
    *, avoid: Collection[str] = (),
) -> dict[str, int]:
    """Pods per worker group that fit on matching nodes; groups without GPUs are absent.
    Nodes in ``avoid`` (the job's ``status.avoidedNodes``) hold none of its pods."""
    limits = {}
    for group in spec.workers:
        need = gpus_per_pod(group, settings.gpu_resource)
        if need == 0:
            continue
        fitting = [
            n for n in inventory.nodes
            if n.name not in avoid and n.matches(group.node_selector) and group.gpu_type in (None, n.product)
        ]
        limits[group.name] = sum(n.gpus // need for n in fitting)
    return limits
