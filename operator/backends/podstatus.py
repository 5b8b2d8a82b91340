"""What a pod's status means, as pure functions: the other half of pods.py.

:func:`summarize` keeps the few pod fields the controller needs (the operator indexes
thousands of pods), :func:`observe_pods` turns summaries into the ranks they run (exit
codes, OOMKilled, evictions and disruptions, lost nodes, image pulls, scheduling),
:func:`vanished_ranks` names the ranks no pod shows any more, :func:`gone_with_its_node`
which of them went with their node, and
:func:`stuck_terminating` picks pods to force-delete off NotReady nodes.
"""

from __future__ import annotations

import dataclasses
import datetime
from typing import Any

from shardwright.operator.api import RankState
from shardwright.operator.backends.pods import (
    HOSTNAME_LABEL, LABEL_GENERATION, LABEL_RANK, LABEL_ROLE, LOCAL_WORLD_SIZE_ENV, ROLE_RAY_HEAD, ROLE_RAY_WORKER,
)
from shardwright.operator.controller import RankObservation, parse_time

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
            # Being evicted while it still runs (DisruptionTarget): disrupted already.
            reason=reason, died=died, disrupted=reason == DISRUPTED or (state in (RankState.PENDING, RankState.RUNNING) and bool(pod.get("disruption"))),
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


def gone_with_its_node(rank: RankObservation, node: str | None, node_ready: dict[str, bool] | None,
                       nodes_back: frozenset[str] = frozenset()) -> RankObservation:
    """A vanished rank whose pod was on a node that is NotReady or gone, or that was NotReady
    since the generation started and is Ready again (``nodes_back``), was evicted with its
    node: the eviction's DisruptionTarget went unseen (no replica led, or the node came back
    before this operator looked; cluster chaos seeds 1000 and 1402). A disruption, which
    spends no restart, as a seen eviction does not."""
    if node is None or node_ready is None:
        return rank
    if node_ready.get(node) is not True:
        return dataclasses.replace(rank, disrupted=True, message=f"{rank.message}; its node {node} is NotReady or gone")
    if node in nodes_back:
        return dataclasses.replace(rank, disrupted=True, message=f"{rank.message}; its node {node} was NotReady during this generation")
    return rank


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
