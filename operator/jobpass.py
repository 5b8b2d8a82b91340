"""One reconcile pass of a TrainingJob on Kubernetes: observe its pods and the nodes, call
the pure core, apply its actions through the Kubernetes backend, write the status.

Runs in a worker thread (the Kubernetes client blocks). API errors become Kopf's
TemporaryError/PermanentError here; a refused generation (422, 403) becomes a condition.
"""

from __future__ import annotations

import datetime
import logging
from typing import Any

import kopf

from shardwright.operator.api import ConditionType, EventType, Phase, Reason, TrainingJobStatus, lenient
from shardwright.operator.backends import pods as render
from shardwright.operator.backends.kubernetes import ApiFailure, KubernetesBackend, delete_job
from shardwright.operator.controller import (
    Event,
    JobRef,
    ReplaceRank,
    SetShares,
    StartGeneration,
    StopGeneration,
    parse_time,
    readmit,
    reconcile,
    rfc3339,
    set_condition,
)
from shardwright.operator.planner import inventory_from_nodelist, plan_for_capacity
from shardwright.operator.operatorconfig import OperatorConfig
from shardwright.operator.planner.capacity import group_limits
from shardwright.operator.statuswrite import StatusMemory, take_back, write_status


log = logging.getLogger(__name__)


def run_pass(doc: dict[str, Any], pods: list[dict], nodes: list[dict], memo: kopf.Memo, memory: StatusMemory):
    """Observe, reconcile, act, write status: runs in a worker thread (blocking client)."""
    try:
        return _reconcile_job(doc, pods, nodes, memo, memory)
    except ApiFailure as e:
        if e.retryable:
            raise kopf.TemporaryError(str(e)) from None
        raise kopf.PermanentError(str(e)) from None


def _reconcile_job(doc, pods, nodes, memo, memory: StatusMemory):
    cfg: OperatorConfig = memo.config
    meta = doc.get("metadata", {})
    if meta.get("deletionTimestamp"):
        return [], None  # children go with the ownerReferences; start nothing now
    job, problems, unknown = lenient.read(doc)
    if unknown != memory.unknown_fields:  # told once per job (again only if the set changes)
        memory.unknown_fields = unknown
        if unknown:
            log.warning(f"{meta.get('namespace')}/{meta.get('name')}: ignoring fields this operator does not know "
                        f"(a newer CRD's): {', '.join(unknown)}")
    if job is None:
        raise kopf.PermanentError("; ".join(str(p) for p in problems))
    spec, now = job.spec, datetime.datetime.now(datetime.timezone.utc)
    server_status = job.status or TrainingJobStatus()
    if (body_rv := meta.get("resourceVersion")) not in memory.lagging:
        # The body shows our last write or a newer version. If the server has everything we
        # computed, its status is the input, with whatever another writer added to it.
        memory.rv = body_rv
        memory.lagging.clear()
        if memory.status is None or memory.status.to_wire() == memory.written:
            memory.status, memory.written = None, server_status.to_wire()
    if memory.written is None:
        memory.written = server_status.to_wire()
    # spec.readmit takes avoided nodes back before the plan, which sizes an elastic job without them.
    status, notes = readmit(spec, memory.status or server_status)
    avoided = status.avoided_nodes
    try:
        # Elastic jobs fit themselves to the ready, matching GPU nodes they do not avoid;
        # rigid ones ask for all their pods.
        limits = group_limits(spec, inventory_from_nodelist(nodes), avoid=avoided) if spec.elastic else None
        plan = plan_for_capacity(spec, None, limits)
    except ValueError as e:
        raise kopf.PermanentError(f"cannot plan: {e}") from None
    owner = render.Owner(name=job.metadata.name, namespace=job.metadata.namespace, uid=meta.get("uid") or "", labels=job.metadata.labels)
    # Children by uid: pods labelled for this name but made for an earlier job of the same
    # name (still being collected) are never adopted.
    mine = [p for p in pods if p.get("owner") == owner.uid]
    foreign = [p["name"] for p in pods if p.get("owner") != owner.uid]
    ckpt_dir = (spec.checkpoint.uri or "").removeprefix("file://") or f"{cfg.kubernetes.pods.checkpoint_mount}/{owner.namespace}/{owner.name}"
    ref = JobRef(
        name=owner.name, namespace=owner.namespace, checkpoint_dir=ckpt_dir,
        object_generation=job.metadata.generation, telemetry_port=cfg.kubernetes.pods.telemetry_port,
        resume_newest=True, uid=owner.uid,
    )
    rank_nodes = {r.rank: r.node for r in status.ranks if r.node}
    backend = KubernetesBackend(
        memo.api, cfg.kubernetes, owner, spec, mine,
        node_ready={n["metadata"]["name"]: _ready(n) for n in nodes},
        known_checkpoint=status.last_checkpoint, avoided_nodes=avoided, request_json=memo.request_json,
        foreign=foreign, expected=_expected_ranks(status, now, cfg.kubernetes.vanished_after_s),
        rank_nodes=rank_nodes, nodes_back=_back_since(nodes, set(rank_nodes.values()), status.generation_start_time),
    )
    result = reconcile(ref, spec, plan, status, backend.observe(now))
    for action in result.actions:
        if isinstance(action, StopGeneration):
            backend.stop(action)
        elif isinstance(action, SetShares):
            backend.set_shares(action)
        elif isinstance(action, ReplaceRank):
            notes += backend.replace(action)
    # The core passes avoidedNodes through; the backend adds a replaced straggler's node.
    result.status.avoided_nodes = backend.avoided_nodes
    result.status.selector = f"{render.LABEL_JOB}={owner.name}"  # the /scale subresource's, for an HPA
    if starts := [a for a in result.actions if isinstance(a, StartGeneration)]:
        # Intent first: the status names the new generation before any of its pods exists,
        # so an operator that dies in between finds them as its own after a restart.
        intent = result.status.to_wire()
        try:
            write_status(memo, owner, memory, intent)
            for action in starts:
                backend.start(action)
        except ApiFailure as e:
            if not e.retryable:
                refused = _rejected(memo, owner, job.metadata.generation, status, memory, e)
                memo.metrics.jobs.update(owner.namespace, owner.name, memory.status, str(spec.runtime))
                return refused
            take_back(memo, owner, memory, intent, status.to_wire())
            raise
    # Everything is applied: from now on the computed status is the truth, even if the
    # write below fails (the next pass retries the write and does not redo the actions).
    memory.status = result.status
    wire = result.status.to_wire()
    requeue = result.requeue_after
    if wire != memory.written and (wait := memory.progress_wait(wire, cfg.progress_status_seconds)) > 0:
        # Only per-step figures changed (the metrics have them now): written when due.
        requeue = wait if requeue is None else min(requeue, wait)
    elif wire != memory.written:
        try:
            write_status(memo, owner, memory, wire)
        except ApiFailure as e:
            if not e.retryable:
                raise
            # The events of this pass still go out; the next pass writes the status again.
            log.info(f"Status of {owner.namespace}/{owner.name} not written, retrying: {e}")
            requeue = cfg.retry_seconds
    memory.failures, memory.rejection = 0, None
    memo.metrics.jobs.update(owner.namespace, owner.name, result.status, str(spec.runtime))
    st = result.status
    if st.phase.terminal and spec.ttl_seconds_after_finished is not None and st.completion_time:
        left = (parse_time(st.completion_time) - now).total_seconds() + spec.ttl_seconds_after_finished
        if left <= 0:
            delete_job(memo.api, owner.namespace, owner.name)
        else:
            requeue = left if requeue is None else min(requeue, left)
    return [a for a in result.actions if isinstance(a, Event)] + notes, requeue



def _expected_ranks(status: TrainingJobStatus, now: datetime.datetime, grace_s: float) -> tuple[int, int, bool] | None:
    """(generation, world size, ran) when every rank of the current generation should have a
    pod: once it ran in full, or once it has been Pending for ``grace_s`` (its pods were all
    created in one pass; a cache catches up in well under that)."""
    if status.phase is Phase.RUNNING:
        return status.generation, status.world_size, True
    if status.phase is Phase.PENDING and status.generation_start_time:
        if (now - parse_time(status.generation_start_time)).total_seconds() >= grace_s:
            return status.generation, status.world_size, False
    return None


def _rejected(memo, owner: render.Owner, generation: int, status: TrainingJobStatus, memory: StatusMemory, error: ApiFailure):
    """The API server refused the generation's objects (422 invalid, 403 forbidden): nothing
    started. Say so in one condition with the server's message, tell it once, and try again
    with exponential backoff (a fixed template or a lifted policy lets it through)."""
    memo.metrics.reconcile_errors.labels(reason="permanent").inc()
    now = datetime.datetime.now(datetime.timezone.utc)
    status = status.model_copy(deep=True)
    message = f"The API server refused this job's pods: {error}"
    status.conditions = set_condition(status.conditions, ConditionType.RUNNING, False, Reason.API_REJECTED, message,
                                      now=rfc3339(now), observed_generation=generation)
    write_status(memo, owner, memory, status.to_wire())
    memory.status = status
    told, memory.rejection = memory.rejection == message, message
    return ([] if told else [Event(EventType.WARNING, Reason.API_REJECTED, message)]), memory.backoff(memo.config)


def _ready(node: dict[str, Any]) -> bool:
    return any(c.get("status") == "True" for c in node["status"]["conditions"])


def _back_since(nodes: list[dict[str, Any]], wanted: set[str], started: str | None) -> frozenset[str]:
    """Of the ``wanted`` nodes (the job's ranks'), those Ready now whose Ready condition
    changed after ``started`` (the generation's start): NotReady at some moment of the
    generation, and back. Only the job's few nodes are parsed on each pass, not the cluster's."""
    if not started or not wanted:
        return frozenset()
    since = parse_time(started)
    return frozenset(n["metadata"]["name"] for n in nodes if n["metadata"]["name"] in wanted and _ready(n) and any(
        (at := c.get("lastTransitionTime")) and parse_time(at) > since for c in n["status"]["conditions"]))
