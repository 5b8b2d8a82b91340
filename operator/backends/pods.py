"""Kubernetes manifests of a generation and what a pod's status means, as pure functions.

Per job: one headless Service (stable DNS for the rendezvous). Per generation: one pod per
replica of every worker group, each running ``ranksPerReplica`` rank processes through
``python -m shardwright.workers.launch`` (``runtime: ray``: a Ray head pod and Ray worker
pods instead, see raypods.py); optionally a PodGroup so a gang scheduler (Volcano,
scheduler-plugins) places all pods or none. Names are deterministic
(``<job>-g<generation>-<group>-<replica>``), so a second create of the same pod is a 409,
never a duplicate.

A plan that places ranks on nodes (``RankPlacement.node``, from the heterogeneous search)
pins each pod there with a required node affinity (:func:`node_affinity`); nodes where a
straggler was replaced are kept out of every later pod (:func:`avoid_nodes`).

Reading back: :func:`summarize` keeps the few pod fields the controller needs (the operator
indexes thousands of pods), :func:`observe_pods` turns summaries into the ranks they run,
and :func:`stuck_terminating` picks pods to force-delete off NotReady nodes.
"""

from __future__ import annotations

import copy
import dataclasses
import datetime
import hashlib
from collections.abc import Collection
from typing import Any

from shardwright.operator.api import RankState
from shardwright.operator.controller import RankObservation, StartGeneration, parse_time
from shardwright.operator.planner import Plan, RankPlacement
from shardwright.workers.config import CONFIG_ENV, TELEMETRY_PORT_ENV, TERMINATION_MESSAGE_ENV, CheckpointConfig

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
#: Pod env: ranks in this pod; the launcher starts one process per local rank.
LOCAL_WORLD_SIZE_ENV = "LOCAL_WORLD_SIZE"
#: Pod env: the S3-compatible server of an s3:// checkpoint URI (read by the AWS SDKs).
ENDPOINT_ENV = "AWS_ENDPOINT_URL"
#: Kueue reads this label on the workload; copied from the TrainingJob when present.
KUEUE_QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
#: Longest DNS label (RFC 1123): a pod's hostname, a label value.
DNS_LABEL_MAX = 63
#: Node label the planner's ``RankPlacement.node`` names (the kubelet sets it on every node).
HOSTNAME_LABEL = "kubernetes.io/hostname"
#: Container waiting reasons that will not clear on their own.
STUCK_WAITING = frozenset({
    "ImagePullBackOff", "ErrImagePull", "InvalidImageName", "CreateContainerConfigError",
    "CreateContainerError", "CrashLoopBackOff",
})

#: Why a rank stopped: its pod was disrupted (DisruptionTarget), deleted, or has vanished.
DISRUPTED, DELETED, VANISHED = "Disrupted", "PodDeleted", "PodVanished"
#: Pod failures that came from outside the rank's run (see ``RankObservation.died``).
DEATHS = frozenset({"OOMKilled", "Evicted", "NodeLost", DISRUPTED, DELETED, VANISHED})
#: Exit codes from here up are a signal's (128 + its number): SIGKILL gives 137.
SIGNAL_EXIT = 128
#: Where a pod's first rank leaves its final report (the container default terminationMessagePath).
TERMINATION_MESSAGE_PATH = "/dev/termination-log"


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
    #: ``volcano`` or ``scheduler-plugins`` adds a PodGroup; None: the default scheduler.
    gang_scheduler: str | None = None
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


def render_pod_group(owner: Owner, action: StartGeneration, settings: PodSettings, members: int) -> dict[str, Any] | None:
    """A PodGroup asking the gang scheduler for all ``members`` pods of the generation at once."""
    meta = _meta(owner, pod_group_name(owner, action.generation), job_labels(owner) | {LABEL_GENERATION: str(action.generation)})
    if settings.gang_scheduler == "volcano":
        spec: dict[str, Any] = {"minMember": members}
        if queue := owner.labels.get(KUEUE_QUEUE_LABEL):
            spec["queue"] = queue
        return {"apiVersion": "scheduling.volcano.sh/v1beta1", "kind": "PodGroup", "metadata": meta, "spec": spec}
    if settings.gang_scheduler == "scheduler-plugins":
        return {"apiVersion": "scheduling.x-k8s.io/v1alpha1", "kind": "PodGroup", "metadata": meta, "spec": {"minMember": members}}
    return None


def render_pods(owner: Owner, action: StartGeneration, spec_groups: dict[str, Any], settings: PodSettings) -> list[dict[str, Any]]:
    """Every pod of the generation: one per (group, replica) in the plan, in rank order.

    ``spec_groups`` maps a group name to its ``WorkerGroupSpec`` (image, resources, node
    selector). Pod env: the torch contract for the pod's first rank plus
    ``LOCAL_WORLD_SIZE``; the launcher derives each process's RANK and LOCAL_RANK.
    """
    plan = action.plan
    master = f"{pod_name(owner, action.generation, plan.ranks[0].group, plan.ranks[0].replica)}.{service_name(owner)}.{owner.namespace}.svc"
    config_json = action.config.model_dump_json()
    return [
        _render_pod(
            owner, action, spec_groups[group], group, replica, placements[0].rank, len(placements),
            master, config_json, settings, node_affinity(placements),
        )
        for (group, replica), placements in replicas(plan).items()
    ]


def replicas(plan: Plan) -> dict[tuple[str, int], list[RankPlacement]]:
    """The pods of a generation: each (group, replica) of the plan with its ranks, in rank order."""
    members: dict[tuple[str, int], list[RankPlacement]] = {}
    for placement in plan.ranks:
        members.setdefault((placement.group, placement.replica), []).append(placement)
    return members


def node_affinity(placements: list[RankPlacement]) -> dict[str, Any] | None:
    """Required node affinity pinning one pod to the node its ranks were planned on.

    ``placements`` are the pod's ``RankPlacement``s. Only when every one names the same
    node: a pod runs on one node, so disagreeing (or partly unplaced) ranks pin nothing and
    the scheduler decides, as for the uniform plan.
    """
    nodes = {p.node for p in placements}
    if len(nodes) != 1 or None in nodes:
        return None
    (node,) = nodes
    term = {"matchExpressions": [{"key": HOSTNAME_LABEL, "operator": "In", "values": [node]}]}
    return {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [term]}}}


def avoid_nodes(pod: dict[str, Any], nodes: Collection[str]) -> dict[str, Any]:
    """``pod`` kept off ``nodes`` (where a straggler was replaced): a required ``NotIn`` on
    ``kubernetes.io/hostname`` in every node selector term (terms are ORed, the expressions
    of one term ANDed, so a pod pinned by :func:`node_affinity` stays pinned as well).
    Works on any rendered pod; returns it unchanged when ``nodes`` is empty."""
    if not nodes:
        return pod
    avoid = {"key": HOSTNAME_LABEL, "operator": "NotIn", "values": sorted(nodes)}
    pod = copy.deepcopy(pod)
    required = (pod["spec"].setdefault("affinity", {}).setdefault("nodeAffinity", {})
                .setdefault("requiredDuringSchedulingIgnoredDuringExecution", {}))
    terms = required.setdefault("nodeSelectorTerms", []) or [{}]
    required["nodeSelectorTerms"] = [t | {"matchExpressions": [*t.get("matchExpressions", []), avoid]} for t in terms]
    return pod


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
    return pod_manifest(owner, action.generation, name, labels, container, settings, group_spec=group_spec, affinity=affinity,
                        checkpoint=action.config.checkpoint)


def replica_labels(owner: Owner, generation: int, group: str, replica: int, first_rank: int) -> dict[str, str]:
    return job_labels(owner) | {
        LABEL_GENERATION: str(generation), LABEL_GROUP: group, LABEL_REPLICA: str(replica), LABEL_RANK: str(first_rank),
    }


def rank_container(group_spec, command: list[str], env: dict[str, str], settings: PodSettings) -> dict[str, Any]:
    """The container of a pod that hosts ranks: the group's image and resources, rank 0's
    rendezvous port and the telemetry port."""
    return {
        "name": "ranks",
        "image": group_spec.image or settings.image,
        "imagePullPolicy": settings.image_pull_policy,
        "command": command,
        "env": [{"name": k, "value": v} for k, v in env.items()],
        "ports": [
            {"name": "rendezvous", "containerPort": settings.master_port},
            {"name": "telemetry", "containerPort": settings.telemetry_port},
        ],
        "resources": group_spec.resources.to_wire() if group_spec.resources else {},
    }


def pod_manifest(owner: Owner, generation: int, name: str, labels: dict[str, str], container: dict[str, Any],
                 settings: PodSettings, *, group_spec=None, affinity: dict[str, Any] | None = None,
                 checkpoint: CheckpointConfig | None = None) -> dict[str, Any]:
    """A pod of generation ``generation`` around ``container``: DNS name ``<name>.<service>``,
    never restarted in place, the checkpoint storage, the Kueue queue label and gang
    scheduling; a worker group's node selector and a planned node's affinity when given."""
    labels = dict(labels)
    if queue := owner.labels.get(KUEUE_QUEUE_LABEL):
        labels[KUEUE_QUEUE_LABEL] = queue
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",  # a failed rank ends the generation; the operator restarts it
        "hostname": name,
        "subdomain": service_name(owner),
        "terminationGracePeriodSeconds": settings.termination_grace_seconds,
        "containers": [container],
    }
    if group_spec is not None and group_spec.node_selector:
        pod_spec["nodeSelector"] = dict(group_spec.node_selector)
    if affinity is not None:
        pod_spec["affinity"] = affinity
    if settings.service_account:
        pod_spec["serviceAccountName"] = settings.service_account
    _checkpoint_storage(pod_spec, container, checkpoint, settings)
    annotations = {}
    if settings.gang_scheduler == "volcano":
        pod_spec["schedulerName"] = "volcano"
        annotations["scheduling.k8s.io/group-name"] = pod_group_name(owner, generation)
    elif settings.gang_scheduler == "scheduler-plugins":
        labels["scheduling.x-k8s.io/pod-group"] = pod_group_name(owner, generation)
    meta = _meta(owner, name, labels)
    if annotations:
        meta["annotations"] = annotations
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": pod_spec}


def _checkpoint_storage(pod_spec: dict[str, Any], container: dict[str, Any], checkpoint: CheckpointConfig | None,
                        settings: PodSettings) -> None:
    """The job's checkpoint storage in the pod: its own claim (spec.checkpoint.volumeClaim),
    else the operator's, at the checkpoint mount; for an object store its endpoint, and the
    keys of its credentials Secret by reference (envFrom): no secret value in the pod spec."""
    claim = (checkpoint.volume_claim if checkpoint else None) or settings.checkpoint_claim
    if claim:
        pod_spec["volumes"] = [{"name": "checkpoints", "persistentVolumeClaim": {"claimName": claim}}]
        container["volumeMounts"] = [{"name": "checkpoints", "mountPath": settings.checkpoint_mount}]
    if checkpoint is None:
        return
    if checkpoint.endpoint:
        container["env"] = [*container.get("env", []), {"name": ENDPOINT_ENV, "value": checkpoint.endpoint}]
    if checkpoint.credentials_secret:
        container["envFrom"] = [*container.get("envFrom", []), {"secretRef": {"name": checkpoint.credentials_secret}}]


# ----------------------------------------------------------------------------- reading pods back


def summarize(pod: dict[str, Any]) -> dict[str, Any]:
    """The fields of a pod the controller reads: small, so an index of thousands stays cheap."""
    meta, spec, status = pod.get("metadata", {}), pod.get("spec", {}), pod.get("status") or {}
    labels = meta.get("labels") or {}
    env = {e.get("name"): e.get("value") for c in spec.get("containers", [])[:1] for e in c.get("env", [])}
    containers = status.get("containerStatuses") or []
    state = (containers[0].get("state") or {}) if containers else {}
    unschedulable = next(
        (c.get("message") or "Unschedulable" for c in status.get("conditions") or []
         if c.get("type") == "PodScheduled" and c.get("status") == "False" and c.get("reason") == "Unschedulable"),
        None,
    )
    role = labels.get(LABEL_ROLE)
    disruption = next(
        (c.get("reason") or "Disrupted" for c in status.get("conditions") or []
         if c.get("type") == "DisruptionTarget" and c.get("status") == "True"),
        None,
    )
    return {
        "name": meta.get("name"),
        "owner": controller_uid(meta),
        "generation": int(labels.get(LABEL_GENERATION, 0)),
        "role": role,
        "rank": int(labels.get(LABEL_RANK, env.get("RANK") or 0)),
        # A Ray head drives every rank of its generation.
        "ranks": int(env.get("WORLD_SIZE" if role == ROLE_RAY_HEAD else LOCAL_WORLD_SIZE_ENV) or 1),
        "phase": status.get("phase") or "Pending",
        "reason": status.get("reason"),
        "message": status.get("message"),
        "node": spec.get("nodeName"),
        "ip": status.get("podIP"),
        "created": meta.get("creationTimestamp"),
        "deleting": meta.get("deletionTimestamp"),
        "waiting": (state.get("waiting") or {}).get("reason"),
        "waitingMessage": (state.get("waiting") or {}).get("message"),
        "terminated": state.get("terminated"),
        "unschedulable": unschedulable,
        "disruption": disruption,
        "avoids": avoided_by(spec),
    }


def controller_uid(meta: dict[str, Any]) -> str | None:
    """The uid of the object's controller (its ``controller: true`` ownerReference): whose
    child it is. A name or a label says which job it was made for; only the uid says that
    this job, not an earlier one of the same name, made it."""
    return next((ref.get("uid") for ref in meta.get("ownerReferences") or [] if ref.get("controller")), None)


def avoided_by(spec: dict[str, Any]) -> list[str]:
    """The nodes a pod spec keeps off through :func:`avoid_nodes` (hostname ``NotIn``)."""
    required = (((spec.get("affinity") or {}).get("nodeAffinity") or {})
                .get("requiredDuringSchedulingIgnoredDuringExecution") or {})
    return sorted({
        node for term in required.get("nodeSelectorTerms") or [] for e in term.get("matchExpressions") or []
        if e.get("key") == HOSTNAME_LABEL and e.get("operator") == "NotIn" for node in e.get("values") or []
    })


def classify(pod: dict[str, Any], now: datetime.datetime, startup_timeout_s: float | None) -> tuple[RankState, int | None, str]:
    """(state, exit code, why) of a pod summary: exit codes, OOMKilled, Evicted, node lost,
    image pulls and scheduling. A pod still not running after ``startup_timeout_s`` counts
    as failed, with the waiting reason, so the generation is restarted with backoff.

    A pod that ended while being deleted or disrupted did not finish training, even when
    it exited 0 (its ranks checkpoint and exit 0 on SIGTERM): it failed, as ``Disrupted``
    when it carries the DisruptionTarget condition (eviction, preemption, node drain or
    shutdown), else ``PodDeleted``."""
    phase, terminated = pod["phase"], pod.get("terminated") or {}
    if phase in ("Succeeded", "Failed") and (cause := pod.get("disruption")):
        return RankState.FAILED, terminated.get("exitCode"), f"{DISRUPTED}: {cause}; the pod stopped at its ranks' next step"
    if phase == "Succeeded" and pod.get("deleting"):
        return RankState.FAILED, 0, f"{DELETED}: the pod was deleted before its ranks finished training"
    if phase == "Succeeded":
        return RankState.SUCCEEDED, 0, ""
    if phase == "Failed":
        if pod.get("reason") == "Evicted":
            return RankState.FAILED, None, f"Evicted: {pod.get('message') or 'the node ran short of resources'}"
        if pod.get("reason") in ("NodeLost", "NodeShutdown", "Terminated"):
            return RankState.FAILED, None, f"NodeLost: node {pod.get('node')} went away"
        code = terminated.get("exitCode")
        why = terminated.get("reason") or "Error"
        if why == "OOMKilled":
            return RankState.FAILED, code, "OOMKilled: raise the group's memory limit or lower microBatch"
        return RankState.FAILED, code, f"{why}: {terminated.get('message') or pod.get('message') or 'rank process exited'}".rstrip(": ")
    if phase == "Unknown" and pod.get("deleting"):
        # Being deleted on a node that stopped reporting: its ranks may still run there
        # (a partition), so it holds the next generation back until confirmed gone or
        # force-deleted (``stuck_terminating``).
        return RankState.RUNNING, None, f"NodeLost: node {pod.get('node')} stopped reporting; waiting for the pod to be gone"
    if phase == "Unknown":
        return RankState.FAILED, None, f"NodeLost: node {pod.get('node')} stopped reporting"
    if phase == "Running":
        return RankState.RUNNING, None, ""
    # Pending: scheduling or pulling; explain why, and give up after the startup timeout.
    why = ""
    if pod.get("unschedulable"):
        why = f"Unschedulable: {pod['unschedulable']}"
    elif pod.get("waiting"):
        why = f"{pod['waiting']}: {pod.get('waitingMessage') or ''}".rstrip(": ")
    if startup_timeout_s is not None and pod.get("created") and not pod.get("deleting"):
        waited = (now - parse_timestamp(pod["created"])).total_seconds()
        if waited >= startup_timeout_s:
            return RankState.FAILED, None, f"PodsReadyTimeout: not running after {waited:.0f}s; {why or 'Pending'}"
    return RankState.PENDING, None, why


def observe_pods(pods: list[dict[str, Any]], now: datetime.datetime, startup_timeout_s: float | None = None) -> list[RankObservation]:
    """The ranks these pod summaries run: a torch pod its own (:func:`observe_pod`); the
    pods of a ``runtime: ray`` generation together (:func:`observe_ray_generation`)."""
    ray = {p["generation"] for p in pods if p.get("role") in (ROLE_RAY_HEAD, ROLE_RAY_WORKER)}
    out = [r for p in pods if p["generation"] not in ray for r in observe_pod(p, now, startup_timeout_s)]
    for generation in sorted(ray):
        out += observe_ray_generation([p for p in pods if p["generation"] == generation], now, startup_timeout_s)
    return out


def observe_ray_generation(pods: list[dict[str, Any]], now: datetime.datetime, startup_timeout_s: float | None = None) -> list[RankObservation]:
    """The ranks of one ``runtime: ray`` generation. The head's driver runs every rank, so
    the head decides: it finished (Succeeded) or failed, and so did every rank; while it
    starts, so do they. A worker pod's own failure (OOMKilled, evicted, node lost) names the
    ranks it hosted, and while the head runs, a worker pod still starting or running says
    where its ranks are. A worker pod that ended on its own (it leaves when the head goes)
    says nothing. Without a head (deleted, or a cache that lags), the worker pods' ranks are
    alive while the pods are, and failed once they left."""
    head = next((p for p in pods if p.get("role") == ROLE_RAY_HEAD), None)
    hosted = {r.rank: r for p in pods if p is not head for r in observe_pod(p, now, startup_timeout_s)}
    if head is None:
        gone = "the Ray head of this generation is gone"
        return [r if r.state is not RankState.SUCCEEDED else dataclasses.replace(r, state=RankState.FAILED, message=gone, reason="RayHeadLost")
                for r in hosted.values()]
    out = []
    for driven in observe_pod(head, now, startup_timeout_s):
        own = hosted.get(driven.rank)
        failed_here = own is not None and own.state is RankState.FAILED and driven.state is not RankState.SUCCEEDED
        placed = own is not None and own.alive and driven.state is RankState.RUNNING
        out.append(own if failed_here or placed else driven)
    return out


def observe_pod(pod: dict[str, Any], now: datetime.datetime, startup_timeout_s: float | None = None) -> list[RankObservation]:
    """The ranks one pod runs, all in the pod's state (a pod fails or runs as a whole)."""
    state, code, why = classify(pod, now, startup_timeout_s)
    reason = why.split(":", 1)[0] if why else None
    died = state is RankState.FAILED and (reason in DEATHS or (code or 0) >= SIGNAL_EXIT)
    return [
        RankObservation(
            pod["generation"], pod["rank"] + i, state, exit_code=code, message=why, node=pod.get("node"),
            reason=reason, died=died, disrupted=reason == DISRUPTED,
        )
        for i in range(pod["ranks"])
    ]


def vanished_ranks(generation: int, world_size: int, ran: bool, seen: list[RankObservation]) -> list[RankObservation]:
    """Ranks of a generation that no pod shows: their pod was deleted without a terminal
    phase (``kubectl delete --force``, the pod garbage collector after its node left), or,
    in a generation that never ran (``ran`` false), never made (an operator that died
    mid-start). They failed and the job restarts; the budget pays only if they had run."""
    have = {r.rank for r in seen if r.generation == generation}
    why = "is gone" if ran else "is missing from a generation that never ran"
    return [
        RankObservation(generation, rank, RankState.FAILED, message=f"{VANISHED}: the pod of rank {rank} {why}",
                        reason=VANISHED, died=True, disrupted=not ran)
        for rank in range(world_size) if rank not in have
    ]


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


def stuck_terminating(pods: list[dict[str, Any]], node_ready: dict[str, bool], now: datetime.datetime, grace_s: float) -> list[str]:
    """Pods being deleted for longer than ``grace_s`` on a node that is NotReady (or gone):
    the kubelet will never confirm, so they are force-deleted (grace period 0)."""
    out = []
    for pod in pods:
        if not pod.get("deleting") or node_ready.get(pod.get("node") or "", False):
            continue
        if (now - parse_timestamp(pod["deleting"])).total_seconds() >= grace_s:
            out.append(pod["name"])
    return out


def parse_timestamp(text: str) -> datetime.datetime:
    """A metadata timestamp: RFC 3339, with or without fractions of a second."""
    try:
        return parse_time(text)
    except ValueError:
        return datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
