"""Kubernetes manifests of a generation and what a pod's status means, as pure functions.

Per job: one headless Service (stable DNS for the rendezvous). Per generation: one pod per
replica of every worker group, each running ``ranksPerReplica`` rank processes through
``python -m shardwright.workers.launch`` (``runtime: ray``: a Ray head pod and Ray worker
pods instead, see raypods.py); optionally gang scheduling (gang.py: Volcano,
scheduler-plugins, Kueue) so all pods are placed or none. Names are deterministic
(``<job>-g<generation>-<group>-<replica>``), so a second create of the same pod is a 409,
never a duplicate.

A plan that places ranks on nodes (``RankPlacement.node``, from the heterogeneous search)
pins each pod there with a required node affinity (:func:`node_affinity`); nodes where a
straggler was replaced are kept out of every later pod (:func:`avoid_nodes`).

A group's pod template (``spec.workers[].template``) is overlaid by :func:`pod_manifest`:
its fields first, then the ones the operator owns (docs/jobs-on-kubernetes.md has the table). Every
pod meets the restricted Pod Security profile unless the template's securityContext says
otherwise (:data:`POD_SECURITY`, :data:`CONTAINER_SECURITY`), gets a memory-backed
``/dev/shm`` for NCCL and no service-account token (nothing in a rank or Ray pod calls the
API server).

Reading pods back (their summaries and the ranks they run) is podstatus.py.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
from collections.abc import Collection
from typing import Any

from shardwright.operator.api.podtemplate import (
    CHECKPOINT_VOLUME, ENDPOINT_ENV, LOCAL_WORLD_SIZE_ENV, RANK_CONTAINER, SHM_PATH, SHM_VOLUME, PodTemplate,
)
from shardwright.operator.controller import StartGeneration
from shardwright.operator.planner import Plan, RankPlacement
from shardwright.workers.config import CONFIG_ENV, TELEMETRY_PORT_ENV, TERMINATION_MESSAGE_ENV, TOKEN_ENV, CheckpointConfig

from . import devices, gang

LABEL_JOB = "shardwright.io/job"
LABEL_GENERATION = "shardwright.io/generation"
LABEL_GROUP = "shardwright.io/group"
LABEL_REPLICA = "shardwright.io/replica"
LABEL_RANK = "shardwright.io/rank"
#: ``runtime: ray`` pods only: ``ray-head`` or ``ray-worker``.
LABEL_ROLE = "shardwright.io/role"
ROLE_RAY_HEAD = "ray-head"
ROLE_RAY_WORKER = "ray-worker"
MANAGED_BY = "shardwright"
#: Kueue's LocalQueue label, on a TrainingJob (and on its pods with ``gang_scheduler: kueue``).
KUEUE_QUEUE_LABEL = gang.KUEUE_QUEUE_LABEL
#: Longest DNS label (RFC 1123): a pod's hostname, a label value.
DNS_LABEL_MAX = 63
#: Node label the planner's ``RankPlacement.node`` names (the kubelet sets it on every node).
HOSTNAME_LABEL = "kubernetes.io/hostname"
#: Where a pod's first rank leaves its final report (the container default terminationMessagePath).
TERMINATION_MESSAGE_PATH = "/dev/termination-log"
#: The user and group of the image (Dockerfile: ``USER 65532:65532``).
IMAGE_USER = 65532
#: Every pod's securityContext unless its template sets a field: the restricted profile.
POD_SECURITY: dict[str, Any] = {"runAsNonRoot": True, "runAsUser": IMAGE_USER, "runAsGroup": IMAGE_USER,
                                "seccompProfile": {"type": "RuntimeDefault"}}
#: Every container's securityContext unless the template sets a field: the restricted profile.
CONTAINER_SECURITY: dict[str, Any] = {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}


@dataclasses.dataclass(frozen=True)
class PodSettings:
    """How worker pods are rendered; read once at operator start-up (chart values)."""

    #: Worker image when a group names none.
    image: str = "ghcr.io/shardwright/shardwright:0.1.0"
    image_pull_policy: str = "IfNotPresent"
    #: torch rendezvous port on the rank-0 pod.
    master_port: int = 29500
    #: Telemetry port of local rank 0 in each pod; local rank i uses port + i.
    telemetry_port: int = 9400
    #: ``volcano``, ``scheduler-plugins`` or ``kueue`` places each generation's pods all or
    #: none (gang.py); None: the default scheduler, pod by pod.
    gang_scheduler: str | None = None
    #: The ``schedulerName`` of scheduler-plugins' scheduler (its chart's default name).
    gang_scheduler_name: str = gang.SCHEDULER_PLUGINS_NAME
    #: Volcano's queue or Kueue's LocalQueue for jobs whose own label names none.
    gang_queue: str | None = None
    #: Seconds SIGTERM has to checkpoint and exit when a generation is stopped gracefully.
    termination_grace_seconds: int = 120
    #: PersistentVolumeClaim mounted at ``checkpoint_mount`` in every pod; None: none.
    checkpoint_claim: str | None = None
    checkpoint_mount: str = "/checkpoints"
    service_account: str | None = None
    #: Resources of a ``runtime: ray`` generation's head pod (Ray's GCS and the driver; no ranks).
    ray_head_resources: dict[str, Any] = dataclasses.field(
        default_factory=lambda: {"requests": {"cpu": "500m", "memory": "1Gi"}, "limits": {"memory": "2Gi"}})


@dataclasses.dataclass(frozen=True)
class Owner:
    """The TrainingJob the children belong to (their ownerReference)."""

    name: str
    namespace: str
    uid: str
    labels: dict[str, str] = dataclasses.field(default_factory=dict)
    api_version: str = "shardwright.io/v1alpha1"
    kind: str = "TrainingJob"

    def reference(self) -> dict[str, Any]:
        return {
            "apiVersion": self.api_version, "kind": self.kind, "name": self.name, "uid": self.uid,
            "controller": True, "blockOwnerDeletion": True,
        }


def job_labels(owner: Owner) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": "shardwright-worker",
        "app.kubernetes.io/instance": owner.name,
        "app.kubernetes.io/component": "worker",
        "app.kubernetes.io/part-of": "shardwright",
        "app.kubernetes.io/managed-by": MANAGED_BY,
        LABEL_JOB: owner.name,
    }


def service_name(owner: Owner) -> str:
    """The job's name: admission holds it to a DNS-1035 label, which a Service name must be."""
    return owner.name


def pod_name(owner: Owner, generation: int, group: str, replica: int) -> str:
    """``<job>-g<generation>-<group>-<replica>``, fitted to a DNS label (it is the pod's hostname)."""
    return child_name(owner, f"-g{generation}-{group}-{replica}")


def pod_group_name(owner: Owner, generation: int) -> str:
    """``<job>-g<generation>``, fitted to a DNS label (gang schedulers put it in a label value)."""
    return child_name(owner, f"-g{generation}")


def child_name(owner: Owner, suffix: str) -> str:
    """``<job><suffix>`` when that fits a DNS label (63 characters); else the job part is cut
    and ends in a hash of the whole job name, ``<job prefix>-<hash8><suffix>``, so every
    generation a job reaches gets a valid hostname. Deterministic, as idempotent creates
    need (a second create of the same pod is a 409), and unchanged for names that fit."""
    name = owner.name + suffix
    if len(name) <= DNS_LABEL_MAX:
        return name
    keep = DNS_LABEL_MAX - len(suffix) - 9  # room for "-<hash8>"
    if keep >= 1:  # the job name starts with a letter, so its prefix is never empty
        return f"{owner.name[:keep].rstrip('-')}-{_hash8(owner.name)}{suffix}"
    # A suffix too long on its own (a 40-character group, huge numbers): cut the whole name.
    return f"{name[:DNS_LABEL_MAX - 9].rstrip('-')}-{_hash8(name)}"


def token_secret_name(owner: Owner) -> str:
    """``<job>-telemetry-<uid>``: the Secret with the job's telemetry token (made by
    dataplane.py). The uid makes it this job's alone: a Secret name may be 253 characters."""
    return f"{child_name(owner, '-telemetry')}-{owner.uid}"


#: The key of the job's token Secret that holds the token.
TOKEN_KEY = "token"


def _hash8(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:8]


def _meta(owner: Owner, name: str, labels: dict[str, str]) -> dict[str, Any]:
    return {"name": name, "namespace": owner.namespace, "labels": labels, "ownerReferences": [owner.reference()]}


def render_service(owner: Owner, settings: PodSettings) -> dict[str, Any]:
    """Headless Service: ``<pod>.<job>.<ns>.svc`` resolves before the pods are ready."""
    labels = job_labels(owner)
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _meta(owner, service_name(owner), labels),
        "spec": {
            "clusterIP": "None",
            "publishNotReadyAddresses": True,
            "selector": {LABEL_JOB: owner.name},
            "ports": [
                {"name": "rendezvous", "port": settings.master_port, "protocol": "TCP"},
                {"name": "telemetry", "port": settings.telemetry_port, "protocol": "TCP"},
            ],
        },
    }


def gang_of(owner: Owner, generation: int, settings: PodSettings, members: int) -> gang.Gang | None:
    """Generation ``generation``'s ``members`` pods as one gang; None without a gang scheduler."""
    if settings.gang_scheduler is None:
        return None
    return gang.Gang(settings.gang_scheduler, pod_group_name(owner, generation), members,
                     gang.queue_of(settings.gang_scheduler, owner.labels, settings.gang_queue), settings.gang_scheduler_name)


def render_pod_group(owner: Owner, action: StartGeneration, settings: PodSettings, members: int) -> dict[str, Any] | None:
    """A PodGroup asking the gang scheduler for all ``members`` pods of the generation at
    once; None without a gang scheduler, or with Kueue (its pod groups are pod labels)."""
    if (g := gang_of(owner, action.generation, settings, members)) is None:
        return None
    return gang.pod_group(g, _meta(owner, g.name, job_labels(owner) | {LABEL_GENERATION: str(action.generation)}))


def join_gang(owner: Owner, generation: int, pods: list[dict[str, Any]], settings: PodSettings) -> list[dict[str, Any]]:
    """``pods``, every pod of generation ``generation``, as members of its gang (gang.py)."""
    if (g := gang_of(owner, generation, settings, len(pods))) is None:
        return pods
    return [gang.join(pod, g) for pod in pods]


def render_pods(owner: Owner, action: StartGeneration, spec_groups: dict[str, Any], settings: PodSettings) -> list[dict[str, Any]]:
    """Every pod of the generation: one per (group, replica) in the plan, in rank order.

    ``spec_groups`` maps a group name to its ``WorkerGroupSpec`` (image, resources, node
    selector, pod template). Pod env: the torch contract for the pod's first rank plus
    ``LOCAL_WORLD_SIZE``; the launcher derives each process's RANK and LOCAL_RANK.
    """
    plan = action.plan
    master = f"{pod_name(owner, action.generation, plan.ranks[0].group, plan.ranks[0].replica)}.{service_name(owner)}.{owner.namespace}.svc"
    config_json = action.config.model_dump_json()
    return join_gang(owner, action.generation, [
        _render_pod(
            owner, action, spec_groups[group], group, replica, placements[0].rank, len(placements),
            master, config_json, settings, node_affinity(placements),
        )
        for (group, replica), placements in replicas(plan).items()
    ], settings)


def replicas(plan: Plan) -> dict[tuple[str, int], list[RankPlacement]]:
    """The pods of a generation: each (group, replica) of the plan with its ranks, in rank order."""
    members: dict[tuple[str, int], list[RankPlacement]] = {}
    for placement in plan.ranks:
        members.setdefault((placement.group, placement.replica), []).append(placement)
    return members


def node_affinity(placements: list[RankPlacement]) -> list[dict[str, Any]] | None:
    """The required node selector expressions pinning one pod to the node its ranks were
    planned on (:func:`pod_manifest` ANDs them into every term of the template's affinity).

    ``placements`` are the pod's ``RankPlacement``s. Only when every one names the same
    node: a pod runs on one node, so disagreeing (or partly unplaced) ranks pin nothing and
    the scheduler decides, as for the uniform plan.
    """
    nodes = {p.node for p in placements}
    if len(nodes) != 1 or None in nodes:
        return None
    (node,) = nodes
    return [{"key": HOSTNAME_LABEL, "operator": "In", "values": [node]}]


def avoid_nodes(pod: dict[str, Any], nodes: Collection[str]) -> dict[str, Any]:
    """``pod`` kept off ``nodes`` (where a straggler was replaced): a required ``NotIn`` on
    ``kubernetes.io/hostname`` in every node selector term (terms are ORed, the expressions
    of one term ANDed, so a pod pinned by :func:`node_affinity` stays pinned as well).
    Works on any rendered pod; returns it unchanged when ``nodes`` is empty."""
    if not nodes:
        return pod
    pod = copy.deepcopy(pod)
    _require(pod["spec"], [{"key": HOSTNAME_LABEL, "operator": "NotIn", "values": sorted(nodes)}])
    return pod


def _require(pod_spec: dict[str, Any], expressions: list[dict[str, Any]]) -> None:
    """AND ``expressions`` into every required node selector term of ``pod_spec`` (terms are
    ORed, the expressions of one term ANDed), making one term when there is none."""
    required = (pod_spec.setdefault("affinity", {}).setdefault("nodeAffinity", {})
                .setdefault("requiredDuringSchedulingIgnoredDuringExecution", {}))
    terms = required.get("nodeSelectorTerms") or [{}]
    required["nodeSelectorTerms"] = [t | {"matchExpressions": [*t.get("matchExpressions", []), *expressions]} for t in terms]


def _render_pod(owner, action, group_spec, group, replica, base, local_ranks, master, config_json, settings, affinity) -> dict[str, Any]:
    name = pod_name(owner, action.generation, group, replica)
    env = {
        "RANK": str(base),
        "WORLD_SIZE": str(action.plan.world_size),
        "LOCAL_RANK": "0",
        LOCAL_WORLD_SIZE_ENV: str(local_ranks),
        "MASTER_ADDR": master,
        "MASTER_PORT": str(settings.master_port),
        TELEMETRY_PORT_ENV: str(settings.telemetry_port),
        TERMINATION_MESSAGE_ENV: TERMINATION_MESSAGE_PATH,
        CONFIG_ENV: config_json,
    }
    container = rank_container(group_spec, ["python", "-m", "shardwright.workers.launch"], env, settings)
    labels = replica_labels(owner, action.generation, group, replica, base)
    return pod_manifest(owner, name, labels, container, settings, group_spec=group_spec, pinned=affinity,
                        checkpoint=action.config.checkpoint)


def replica_labels(owner: Owner, generation: int, group: str, replica: int, first_rank: int) -> dict[str, str]:
    return job_labels(owner) | {
        LABEL_GENERATION: str(generation), LABEL_GROUP: group, LABEL_REPLICA: str(replica), LABEL_RANK: str(first_rank),
    }


def group_image(group_spec, settings: PodSettings) -> str:
    """The image of a group's ranks: the group's, its template's rank container's, the chart's."""
    return group_spec.image or group_spec.template.container(RANK_CONTAINER).get("image") or settings.image


def rank_container(group_spec, command: list[str], env: dict[str, str], settings: PodSettings) -> dict[str, Any]:
    """The container of a pod that hosts ranks: the group's image and resources, rank 0's
    rendezvous port and the telemetry port."""
    return {
        "name": RANK_CONTAINER,
        "image": group_image(group_spec, settings),
        "imagePullPolicy": settings.image_pull_policy,
        "command": command,
        "env": [{"name": k, "value": v} for k, v in env.items()],
        "ports": [
            {"name": "rendezvous", "containerPort": settings.master_port},
            {"name": "telemetry", "containerPort": settings.telemetry_port},
        ],
        "resources": group_spec.resources.to_wire() if group_spec.resources else {},
    }


def pod_manifest(owner: Owner, name: str, labels: dict[str, str], container: dict[str, Any],
                 settings: PodSettings, *, group_spec=None, template: PodTemplate | None = None,
                 pinned: list[dict[str, Any]] | None = None, checkpoint: CheckpointConfig | None = None) -> dict[str, Any]:
    """A pod around ``container``: DNS name ``<name>.<service>``, never restarted in place,
    the checkpoint storage, /dev/shm; a worker group's node selector, GPUs and network
    (devices.py) and pod template (``template``, else the group's), and the node expressions
    ``pinned`` ANDed into its required node affinity. Gang scheduling is :func:`join_gang`'s,
    once every pod of the generation is rendered."""
    if template is None:
        template = group_spec.template if group_spec is not None else PodTemplate()
    theirs = copy.deepcopy(template.spec)
    labels = template.metadata.labels | labels
    pod_spec: dict[str, Any] = {"automountServiceAccountToken": False}  # nothing in the pod calls the API server
    if settings.service_account:
        pod_spec["serviceAccountName"] = settings.service_account
    if group_spec is not None and group_spec.node_selector:
        pod_spec["nodeSelector"] = dict(group_spec.node_selector)
    pod_spec |= {k: v for k, v in theirs.items() if k not in ("containers", "initContainers", "securityContext")}
    pod_spec |= {
        "restartPolicy": "Never",  # a failed rank ends the generation; the operator restarts it
        "hostname": name,
        "subdomain": service_name(owner),
        "terminationGracePeriodSeconds": settings.termination_grace_seconds,
        "securityContext": POD_SECURITY | theirs.get("securityContext", {}),
        "containers": [_overlay(_with_token(owner, container), template.container(container["name"]))],
    }
    if init := theirs.get("initContainers"):
        pod_spec["initContainers"] = [_restricted(c) for c in init]
    if pinned:
        _require(pod_spec, pinned)
    main = pod_spec["containers"][0]
    _checkpoint_storage(pod_spec, main, checkpoint, settings)
    _shared_memory(pod_spec, main)
    annotations = dict(template.metadata.annotations)
    if group_spec is not None:
        devices.apply(pod_spec, main, annotations, group_spec)
    meta = _meta(owner, name, labels)
    if annotations:
        meta["annotations"] = annotations
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": pod_spec}


def _with_token(owner: Owner, container: dict[str, Any]) -> dict[str, Any]:
    """``container`` with the job's telemetry token in its env, read from the job's Secret
    (the pod spec names the Secret, never the value): the ranks' /status and /control ask for it."""
    ref = {"secretKeyRef": {"name": token_secret_name(owner), "key": TOKEN_KEY}}
    return container | {"env": [*container.get("env", []), {"name": TOKEN_ENV, "valueFrom": ref}]}


def _overlay(ours: dict[str, Any], theirs: dict[str, Any]) -> dict[str, Any]:
    """The operator's container with the template's one of the same name over it: lists
    (env, envFrom, volumeMounts, ports) appended, the operator's env first and kept (a name
    it sets is dropped from the template's), other fields the template's; what runs stays
    the operator's. Restricted securityContext defaults under the template's fields."""
    out = ours | {k: v for k, v in theirs.items() if k not in _OURS}
    for key in ("envFrom", "volumeMounts", "ports"):
        out[key] = [*ours.get(key, []), *theirs.get(key, [])]
    ours_env = ours.get("env", [])
    owned = {e["name"] for e in ours_env}
    out["env"] = [*ours_env, *(e for e in theirs.get("env", []) if not (isinstance(e, dict) and e.get("name") in owned))]
    return _restricted({k: v for k, v in out.items() if v != []})


#: Container fields the overlay never takes from a template: what runs and its lists.
_OURS = frozenset({"name", "command", "args", "env", "envFrom", "volumeMounts", "ports"})


def _restricted(container: dict[str, Any]) -> dict[str, Any]:
    """``container`` with the restricted profile's securityContext under its own fields."""
    return container | {"securityContext": copy.deepcopy(CONTAINER_SECURITY) | container.get("securityContext", {})}


def _shared_memory(pod_spec: dict[str, Any], container: dict[str, Any]) -> None:
    """A memory-backed ``/dev/shm`` (NCCL's and Ray's shared buffers; the runtime's default is
    64 MiB), limited to the container's memory limit, which its pages count against anyway;
    without a limit the kubelet sizes it to the node's allocatable memory."""
    volume: dict[str, Any] = {"medium": "Memory"}
    if limit := (container.get("resources") or {}).get("limits", {}).get("memory"):
        volume["sizeLimit"] = limit
    pod_spec["volumes"] = [*pod_spec.get("volumes", []), {"name": SHM_VOLUME, "emptyDir": volume}]
    container["volumeMounts"] = [*container.get("volumeMounts", []), {"name": SHM_VOLUME, "mountPath": SHM_PATH}]


def _checkpoint_storage(pod_spec: dict[str, Any], container: dict[str, Any], checkpoint: CheckpointConfig | None,
                        settings: PodSettings) -> None:
    """The job's checkpoint storage in the pod: its own claim (spec.checkpoint.volumeClaim),
    else the operator's, at the checkpoint mount; for an object store its endpoint, and the
    keys of its credentials Secret by reference (envFrom): no secret value in the pod spec."""
    claim = (checkpoint.volume_claim if checkpoint else None) or settings.checkpoint_claim
    if claim:
        pod_spec["volumes"] = [*pod_spec.get("volumes", []), {"name": CHECKPOINT_VOLUME, "persistentVolumeClaim": {"claimName": claim}}]
        container["volumeMounts"] = [*container.get("volumeMounts", []), {"name": CHECKPOINT_VOLUME, "mountPath": settings.checkpoint_mount}]
    if checkpoint is None:
        return
    if checkpoint.endpoint:
        container["env"] = [*container.get("env", []), {"name": ENDPOINT_ENV, "value": checkpoint.endpoint}]
    if checkpoint.credentials_secret:
        container["envFrom"] = [*container.get("envFrom", []), {"secretRef": {"name": checkpoint.credentials_secret}}]


def render_disruption_budget(owner: Owner, generation: int, pods: int) -> dict[str, Any] | None:
    """A PodDisruptionBudget over one generation's pods: voluntary evictions (a drain) may
    take one of them, which restarts the gang once, and none more while it is down. An
    integer ``minAvailable``: the only form the disruption controller accepts for pods
    whose controller has no scale subresource. None for a one-pod generation."""
    if pods < 2:
        return None
    labels = job_labels(owner) | {LABEL_GENERATION: str(generation)}
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": _meta(owner, pod_group_name(owner, generation), labels),
        # A pod not ready yet (scheduling, starting) may always go: a drain never waits on it.
        "spec": {"minAvailable": pods - 1, "unhealthyPodEvictionPolicy": "AlwaysAllow",
                 "selector": {"matchLabels": {LABEL_JOB: owner.name, LABEL_GENERATION: str(generation)}}},
    }
