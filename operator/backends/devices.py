"""A worker group's GPUs and RDMA network on its rank pods (the API's side: ``api/devices.py``).

Applied by ``pods.pod_manifest`` after the template's overlay, so a template's ``resources``
or ``securityContext`` cannot drop them: the extended resources (``nvidia.com/gpu`` =
ranks per pod on a GPU group, the group's RDMA devices) as request and limit, the GPU
product as a node selector ANDed with the group's or template's own, the Multus networks
annotation, and ``IPC_LOCK`` added to the rank container's capabilities when asked.
Admission has refused whatever contradicts these, so nothing here overrides a user's value.
"""

from __future__ import annotations

from typing import Any

from shardwright.operator.api.devices import GPU_PRODUCT_LABEL, IPC_LOCK, NETWORKS_ANNOTATION, pod_resources


def apply(pod_spec: dict[str, Any], container: dict[str, Any], annotations: dict[str, str], group: Any) -> None:
    """Put ``group``'s devices into ``pod_spec``, its rank ``container`` and the pod's
    ``annotations`` (all the pod's own copies: nothing shared with the spec is changed)."""
    if extra := {name: str(count) for name, count in pod_resources(group).items()}:
        resources = dict(container.get("resources") or {})
        for section in ("requests", "limits"):
            resources[section] = {**(resources.get(section) or {}), **extra}
        container["resources"] = resources
    if group.gpu_type:
        pod_spec["nodeSelector"] = {**(pod_spec.get("nodeSelector") or {}), GPU_PRODUCT_LABEL: group.gpu_type}
    network = group.network
    if network.networks:
        annotations[NETWORKS_ANNOTATION] = ",".join(network.networks)
    if network.ipc_lock:
        context = dict(container.get("securityContext") or {})
        capabilities = dict(context.get("capabilities") or {})
        capabilities["add"] = [*(c for c in capabilities.get("add") or [] if c != IPC_LOCK), IPC_LOCK]
        container["securityContext"] = context | {"capabilities": capabilities}
