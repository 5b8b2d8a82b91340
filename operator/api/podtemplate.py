"""A worker group's pod template: what a user adds to its rank pods, and what is the operator's.

``spec.workers[].template`` is a PodTemplateSpec. Its ``metadata`` (labels, annotations) is
typed here; its ``spec`` is a PodSpec kept as the user wrote it (the CRD preserves it
unchecked; the API server validates the pod when the operator creates it). :func:`problems`
judges only what is the operator's to judge: the fields it owns (:data:`OWNED_POD_FIELDS`,
the rank container's command and env, its volumes and labels), names the overlay needs,
and a field given both in the template and by the group. docs/jobs-on-kubernetes.md has the table.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from pydantic import Field

from .base import ApiModel
from shardwright.workers.config import CONFIG_ENV, TELEMETRY_PORT_ENV, TERMINATION_MESSAGE_ENV, TOKEN_ENV

#: What the CRD says of a PodSpec: an object whose fields the API server keeps unchecked.
PRESERVE_UNKNOWN = {"x-kubernetes-preserve-unknown-fields": True}
#: The container that runs the ranks; in a template it takes additions to the operator's.
RANK_CONTAINER = "ranks"
#: Pod env: ranks in this pod; the launcher starts one process per local rank.
LOCAL_WORLD_SIZE_ENV = "LOCAL_WORLD_SIZE"
#: Pod env: the S3-compatible server of an s3:// checkpoint URI (read by the AWS SDKs).
ENDPOINT_ENV = "AWS_ENDPOINT_URL"
#: The rank container's env the operator sets (the torch contract and the launcher's).
OWNED_ENV = frozenset({"RANK", "WORLD_SIZE", "LOCAL_RANK", LOCAL_WORLD_SIZE_ENV, "MASTER_ADDR", "MASTER_PORT",
                       TELEMETRY_PORT_ENV, TERMINATION_MESSAGE_ENV, CONFIG_ENV, ENDPOINT_ENV, TOKEN_ENV})
#: Volumes the operator adds: the checkpoint claim and the memory-backed /dev/shm.
CHECKPOINT_VOLUME = "checkpoints"
SHM_VOLUME = "shm"
SHM_PATH = "/dev/shm"
#: Pod fields the operator sets and a template may not: the pod's DNS name under the job's
#: Service, no restart in place (the operator restarts the gang), the grace its graceful
#: stop waits for.
OWNED_POD_FIELDS = ("hostname", "subdomain", "restartPolicy", "terminationGracePeriodSeconds")
#: The rank container's fields the operator sets: what it runs.
OWNED_CONTAINER_FIELDS = ("command", "args")
#: Label and annotation keys under this prefix are the operator's.
OWNED_PREFIX = "shardwright.io/"


class PodTemplateMetadata(ApiModel):
    labels: dict[str, str] = Field(default_factory=dict, description="Added to every pod of the group.")
    annotations: dict[str, str] = Field(default_factory=dict, description="Added to every pod of the group.")


class PodTemplate(ApiModel):
    """Labels, annotations and a PodSpec overlaid on the group's rank pods (docs/jobs-on-kubernetes.md)."""

    metadata: PodTemplateMetadata = Field(default_factory=PodTemplateMetadata)
    spec: dict[str, Any] = Field(
        default_factory=dict,
        json_schema_extra=PRESERVE_UNKNOWN,
        description="A Kubernetes PodSpec (tolerations, nodeSelector, affinity, priorityClassName, "
        "imagePullSecrets, runtimeClassName, volumes, securityContext, serviceAccountName, "
        "initContainers, ...). The container named `ranks` adds to the rank container (env, "
        "volumeMounts, securityContext, resources, image); sidecars are initContainers with "
        "restartPolicy: Always. Kept as written here: the API server validates the pod when "
        "the operator creates it.",
    )

    def container(self, name: str) -> dict[str, Any]:
        """The template's container ``name`` (empty when it has none)."""
        return next((c for c in self.spec.get("containers") or [] if isinstance(c, dict) and c.get("name") == name), {})


def problems(path: str, group: Any) -> Iterable[tuple[str, str]]:
    """(field path, message) for what the operator refuses in ``group``'s template at ``path``
    (``spec.workers[i]``): owned fields, unnamed containers, a field the group sets too."""
    template: PodTemplate = group.template
    where = f"{path}.template"
    for section, keys in (("labels", template.metadata.labels), ("annotations", template.metadata.annotations)):
        for key in keys:
            if key.startswith(OWNED_PREFIX):
                yield f"{where}.metadata.{section}.{key}", f"{OWNED_PREFIX}* keys are the operator's (it finds its pods by them); use another prefix"
    spec, where = template.spec, f"{where}.spec"
    for field in OWNED_POD_FIELDS:
        if field in spec:
            yield f"{where}.{field}", "set by the operator on every rank pod; remove it (docs/jobs-on-kubernetes.md lists what a template may set)"
    if spec.get("nodeSelector") and group.node_selector:
        yield f"{where}.nodeSelector", f"set in {path}.nodeSelector too; set one of them (the group's: the planner counts nodes by it)"
    yield from _mappings(spec, where, ("securityContext", "affinity"))
    yield from _node_terms(spec.get("affinity"), f"{where}.affinity")
    yield from _named(spec, where, "volumes", reserved={CHECKPOINT_VOLUME, SHM_VOLUME})
    yield from _named(spec, where, "initContainers", reserved={RANK_CONTAINER})
    yield from _named(spec, where, "containers", reserved=set())
    taken = {c.get("name") for c in _items(spec, "initContainers")}
    for i, c in enumerate(_items(spec, "containers")):
        at, name = f"{where}.containers[{i}]", c.get("name")
        if name == RANK_CONTAINER:
            yield from _rank_container(at, c, path, group)
        elif name in taken:
            yield f"{at}.name", f"{name!r} names an init container too; container names are unique in a pod"
        elif isinstance(name, str) and name:
            yield f"{at}.name", (f"only the rank container ({RANK_CONTAINER!r}) goes in containers: the pod ends when its ranks do. "
                                 "Put a sidecar in initContainers with restartPolicy: Always (a native sidecar)")


def _rank_container(at: str, c: dict[str, Any], path: str, group: Any) -> Iterable[tuple[str, str]]:
    """The template's rank container ``c`` at ``at``: what it adds, never what runs."""
    for field in OWNED_CONTAINER_FIELDS:
        if field in c:
            yield f"{at}.{field}", "the operator runs the ranks' launcher there; remove it"
    if "image" in c and group.image:
        yield f"{at}.image", f"set in {path}.image too; set one of them"
    if "resources" in c and (group.resources.requests or group.resources.limits):
        yield f"{at}.resources", f"set in {path}.resources too; set one of them"
    yield from _mappings(c, at, ("securityContext",))
    for key in ("env", "envFrom", "volumeMounts", "ports"):
        if key in c and not isinstance(c[key], list):
            yield f"{at}.{key}", f"must be a list (got {type(c[key]).__name__})"
    for i, env in enumerate(_items(c, "env")):
        if env.get("name") in OWNED_ENV:
            yield f"{at}.env[{i}].name", f"{env['name']} is set by the operator; owned: {', '.join(sorted(OWNED_ENV))}"
    for i, mount in enumerate(_items(c, "volumeMounts")):
        if mount.get("mountPath") == SHM_PATH:
            yield f"{at}.volumeMounts[{i}].mountPath", f"the operator mounts a memory-backed volume at {SHM_PATH}"


def _items(node: dict[str, Any], field: str) -> list[Any]:
    """``node[field]`` when it is a list of mappings, else none (what is malformed there is
    :func:`_named`'s to name, or the API server's)."""
    items = node.get(field)
    return items if isinstance(items, list) and all(isinstance(i, dict) for i in items) else []


def _node_terms(affinity: Any, at: str) -> Iterable[tuple[str, str]]:
    """The required node selector terms the operator ANDs its placement into: mappings down
    to a list of mapping terms."""
    node = affinity
    for step in ("nodeAffinity", "requiredDuringSchedulingIgnoredDuringExecution"):
        if not isinstance(node, dict) or step not in node:
            return
        node, at = node[step], f"{at}.{step}"
        if not isinstance(node, dict):
            yield at, f"must be a mapping (got {type(node).__name__})"
            return
    terms = node.get("nodeSelectorTerms", [])
    if not isinstance(terms, list) or not all(isinstance(t, dict) and isinstance(t.get("matchExpressions", []), list) for t in terms):
        yield f"{at}.nodeSelectorTerms", "must be a list of terms, each a mapping with a list of matchExpressions"


def _mappings(node: dict[str, Any], at: str, fields: tuple[str, ...]) -> Iterable[tuple[str, str]]:
    """The ``fields`` of ``node`` the overlay merges into the operator's: mappings when set."""
    for field in fields:
        if field in node and not isinstance(node[field], dict):
            yield f"{at}.{field}", f"must be a mapping (got {type(node[field]).__name__})"


def _named(spec: dict[str, Any], at: str, field: str, *, reserved: set[str]) -> Iterable[tuple[str, str]]:
    """``spec[field]``: a list of mappings, each with a name, none twice, none ``reserved``."""
    items = spec.get(field)
    if items is None:
        return
    if not isinstance(items, list):
        yield f"{at}.{field}", f"must be a list (got {type(items).__name__})"
        return
    seen: set[str] = set()
    for i, item in enumerate(items):
        name = item.get("name") if isinstance(item, dict) else None
        if not isinstance(item, dict):
            yield f"{at}.{field}[{i}]", f"must be a mapping (got {type(item).__name__})"
        elif not isinstance(name, str) or not name:
            yield f"{at}.{field}[{i}].name", "required: a name"
        elif name in reserved:
            yield f"{at}.{field}[{i}].name", f"{name!r} is the operator's; choose another name"
        elif name in seen:
            yield f"{at}.{field}[{i}].name", f"duplicate name {name!r}"
        else:
            seen.add(name)


__all__ = ["PodTemplate", "PodTemplateMetadata", "problems", "RANK_CONTAINER", "OWNED_ENV", "OWNED_POD_FIELDS"]
