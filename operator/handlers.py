"""Kopf handlers: thin adapters from cluster events to the pure reconcile core.

Each TrainingJob gets one loop (an asyncio task of this operator, started by the job's
first watch event and cancelled when the object is gone) that observes the job's pods (from
a Kopf index, no list requests), calls the same ``controller.reconcile`` the local runner
calls, applies the actions through the Kubernetes backend, and writes ``.status`` once per
pass, only when it changed. Pod and TrainingJob events wake the loop at once; otherwise it
runs every ``resync_seconds`` (rank 0's ``/status`` is polled then) or when the core asks
(backoff). No change-handler chains: after an operator restart the loop simply resumes from
the object's status and the pods it sees, so nothing is lost or duplicated. Not a Kopf
daemon: Kopf puts its finalizer on every object a daemon runs for, and with the operator
stopped or uninstalled, deleting a job or its namespace would hang; children go by their
ownerReferences instead.

Errors become Kopf's TemporaryError/PermanentError here, and nowhere else.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import copy
import dataclasses
import datetime
import logging
import os
import random
import time
from typing import Any

import kopf
from kubernetes import client, config as kube_config

from shardwright.operator.api import GROUP, VERSION, ConditionType, EventType, Phase, Reason, TrainingJob, TrainingJobStatus, validate
from shardwright.operator import webhook
from shardwright.operator.backends import probe
from shardwright.operator.backends import pods as render
from shardwright.operator.backends.kubernetes import (
    READMIT_ANNOTATION,
    ApiFailure,
    KubernetesBackend,
    KubernetesSettings,
    clear_annotation,
    delete_job,
    patch_status,
    read_job,
    readmit_events,
    readmit_request,
)
from shardwright.operator.controller import (
    Event,
    JobRef,
    ReplaceRank,
    SetShares,
    StartGeneration,
    StopGeneration,
    parse_time,
    reconcile,
    rfc3339,
    set_condition,
)
from shardwright.operator.lease import LeaseLost
from shardwright.operator.metrics import OperatorMetrics
from shardwright.operator.planner import inventory_from_nodelist, plan_for_capacity
from shardwright.operator.planner.capacity import group_limits

REGISTRY = kopf.OperatorRegistry()
PLURAL = TrainingJob.PLURAL
#: Kopf's finalizer, renamed into our group (ANCHORS: finalizers are shardwright.io/<purpose>).
FINALIZER = "shardwright.io/operator"
MANAGED = {"app.kubernetes.io/managed-by": render.MANAGED_BY}
log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class OperatorConfig:
    """Everything the handlers need, read once by ``shardwright operator``."""

    kubernetes: KubernetesSettings = dataclasses.field(default_factory=KubernetesSettings)
    #: Seconds between passes of a job when nothing happens (progress polling); events wake
    #: a job at once, so this bounds only how stale step and tokens/s may get.
    resync_seconds: float = 10.0
    #: Seconds to wait after a failed API call (5xx, 409, 429, or a rejected pod), doubled
    #: with each failure in a row up to ``retry_max_seconds``, with +-20 % jitter.
    retry_seconds: float = 1.0
    retry_max_seconds: float = 300.0
    #: Threads running reconcile passes (the Kubernetes client blocks). asyncio's default
    #: pool has min(32, cores + 4) threads, shared with every other ``to_thread`` user: 6 on
    #: a 2-core pod, so at most 6 jobs could wait on the API server at once.
    reconcile_threads: int = 32
    #: Admission webhook port (None: any free port); TLS files from the chart's Secret.
    webhook_port: int | None = 9443
    webhook_certfile: str | None = None
    webhook_pkeyfile: str | None = None
    #: Plain HTTP webhook for tests; never in a cluster (the API server requires TLS).
    webhook_insecure: bool = False
    #: Serve the admission webhook at all (off: out of cluster without a certificate).
    webhook: bool = True
    #: Address the webhook, metrics and health endpoints listen on (all interfaces in a pod;
    #: 127.0.0.1 for a local run).
    bind_address: str = "0.0.0.0"


def make_memo(cfg: OperatorConfig, *, api: client.ApiClient | None = None, request_json=probe.request_json) -> kopf.Memo:
    """Operator-wide state; Kopf shallow-copies it per object, so these are shared.
    ``request_json``: how ranks' telemetry is asked (tests answer for the ranks)."""
    executor = concurrent.futures.ThreadPoolExecutor(cfg.reconcile_threads, thread_name_prefix="reconcile")
    return kopf.Memo(config=cfg, api=api, request_json=request_json, metrics=OperatorMetrics(), wakeups={}, executor=executor,
                     jobs={}, bodies={})


def api_client() -> client.ApiClient:
    """In-cluster service account, else the kubeconfig (``KUBECONFIG``): read once at start."""
    try:
        kube_config.load_incluster_config()
        configuration = client.Configuration.get_default_copy()
    except kube_config.ConfigException:
        configuration = client.Configuration()
        # The path is passed explicitly: the client reads KUBECONFIG only at its import.
        kube_config.load_kube_config(config_file=os.environ.get("KUBECONFIG"), client_configuration=configuration)
    configuration.connection_pool_maxsize = 32  # one per reconcile thread (OperatorConfig.reconcile_threads)
    return client.ApiClient(configuration)


# ----------------------------------------------------------------------------- settings


@kopf.on.startup(registry=REGISTRY)
def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    cfg: OperatorConfig = memo.config
    settings.persistence.finalizer = FINALIZER
    # Kopf keeps handler progress and the last-handled spec in annotations by default (they
    # can outgrow the 256 KiB annotation limit). This operator has no change handlers, so
    # neither is written; should one be added, its state lives under our group.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="shardwright.io")
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(prefix="shardwright.io", key="last-handled")
    settings.posting.level = logging.WARNING  # our own events are explicit; only warnings from logs
    settings.posting.reporting_component = "shardwright-operator"
    settings.execution.max_workers = 16  # the Kubernetes client is sync: API calls run in threads
    settings.watching.server_timeout = 300
    settings.admission.server = kopf.WebhookServer(
        port=cfg.webhook_port, certfile=cfg.webhook_certfile, pkeyfile=cfg.webhook_pkeyfile,
        insecure=cfg.webhook_insecure, addr=cfg.bind_address,
    ) if cfg.webhook else webhook.no_webhook
    settings.admission.managed = None  # the chart owns the ValidatingWebhookConfiguration
    if memo.api is None:
        memo.api = api_client()


@kopf.on.cleanup(registry=REGISTRY)
async def release(memo: kopf.Memo, **_: Any) -> None:
    """Stop every job loop; then no pass is queued and the idle threads can go."""
    loops = list(memo.jobs.values())
    for task in loops:
        task.cancel()
    await asyncio.gather(*loops, return_exceptions=True)
    memo.executor.shutdown(wait=False)


@kopf.on.login(registry=REGISTRY)
def login(memo: kopf.Memo, **_: Any) -> kopf.ConnectionInfo:
    """Kopf uses the same credentials as our client: in-cluster, else the kubeconfig."""
    if memo.api is None:
        memo.api = api_client()
    c = memo.api.configuration
    # kubernetes>=35 keeps the token under "BearerToken" (older ones: "authorization"), with
    # its "Bearer" prefix in api_key_prefix; this call reads either, as the client does.
    if c.refresh_api_key_hook is not None:  # in-cluster: the projected token is re-read
        c.refresh_api_key_hook(c)
    scheme, _, token = (c.get_api_key_with_prefix("BearerToken", alias="authorization") or "").partition(" ")
    return kopf.ConnectionInfo(
        server=c.host, ca_path=c.ssl_ca_cert, insecure=not c.verify_ssl,
        scheme=scheme or None, token=token or None,
        certificate_path=c.cert_file, private_key_path=c.key_file,
    )


@kopf.on.probe(id="jobs", registry=REGISTRY)
def liveness(memo: kopf.Memo, **_: Any) -> int:
    """Kopf's liveness endpoint reports this: the number of jobs with a running loop."""
    return len(memo.wakeups)


# ----------------------------------------------------------------------------- indexes and wake-ups


@kopf.index("pods", labels=MANAGED, registry=REGISTRY)
def pods_by_job(body: kopf.Body, namespace: str, labels: kopf.Labels, **_: Any) -> dict:
    return {(namespace, labels.get(render.LABEL_JOB)): render.summarize(dict(body))}


@kopf.index("nodes", registry=REGISTRY)
def node_index(name: str, body: kopf.Body, **_: Any) -> dict:
    """The parts of a Node that placement reads: readiness, cordon, labels, allocatable GPUs
    (the shape of a NodeList item, so the planner's inventory reads it as it is)."""
    status = body.get("status") or {}
    return {name: {
        "metadata": {"name": name, "labels": dict(body.get("metadata", {}).get("labels") or {})},
        "spec": {"unschedulable": bool((body.get("spec") or {}).get("unschedulable"))},
        "status": {
            "allocatable": dict(status.get("allocatable") or {}),
            "conditions": [dict(c) for c in status.get("conditions") or [] if c.get("type") == "Ready"],
        },
    }}


def _ready(node: dict[str, Any]) -> bool:
    return any(c.get("status") == "True" for c in node["status"]["conditions"])


@kopf.on.event("pods", labels=MANAGED, registry=REGISTRY)
def pod_changed(namespace: str, labels: kopf.Labels, memo: kopf.Memo, **_: Any) -> None:
    _wake(memo, (namespace, labels.get(render.LABEL_JOB)))


@kopf.on.event(GROUP, VERSION, PLURAL, registry=REGISTRY)
async def job_changed(
    event: kopf.RawEvent, body: kopf.Body, namespace: str, name: str, memo: kopf.Memo,
    pods_by_job: kopf.Index, node_index: kopf.Index, logger: logging.Logger, **_: Any,
) -> None:
    """Hand the job's latest body to its loop, starting the loop on the first event (also
    the listing after an operator start) and ending it when the object is gone."""
    key = (namespace, name)
    if event.get("type") == "DELETED":
        if (task := memo.jobs.pop(key, None)) is not None:
            task.cancel()
        memo.bodies.pop(key, None)
        memo.metrics.jobs.forget(namespace, name)
        return
    memo.bodies[key] = copy.deepcopy(dict(body))
    if key not in memo.jobs:
        memo.jobs[key] = asyncio.create_task(run_job(key, memo, pods_by_job, node_index, logger), name=f"TrainingJob {namespace}/{name}")
    _wake(memo, key)


def _wake(memo: kopf.Memo, key: tuple[str, str]) -> None:
    if (event := memo.wakeups.get(key)) is not None:
        event.set()


# ----------------------------------------------------------------------------- admission


@kopf.on.validate(GROUP, VERSION, PLURAL, operations=["CREATE", "UPDATE"], registry=REGISTRY)
def admit(body: kopf.Body, old: kopf.Body | None = None, **_: Any) -> None:
    """The same validation and messages as ``shardwright validate``. An update is not judged
    on the name, as the CRD's rule judges it at create only (a name never changes): a job
    named before that rule keeps taking edits."""
    doc = {k: v for k, v in dict(body).items() if k != "status"}
    if old is not None and isinstance(doc.get("metadata"), dict):
        doc["metadata"] = {**doc["metadata"], "name": "updated-job"}  # any valid name: the rest is checked
    _, problems = validate(doc)
    if problems:
        raise kopf.AdmissionError("; ".join(str(p) for p in problems), code=422)


# ----------------------------------------------------------------------------- the job loop


@dataclasses.dataclass
class _Memory:
    """What this loop knows beyond the watched object: the status it computed (used as the
    next input even if writing it failed) and the status the server has."""

    #: The job's uid: a new object under the same name starts from nothing.
    uid: str | None = None
    status: TrainingJobStatus | None = None
    written: dict[str, Any] | None = None
    #: resourceVersion the next status write is conditional on: the body's, or that of our
    #: own last write while the watched body still shows a version before it (``lagging``:
    #: every version our writes replaced since the body last caught up).
    rv: str | None = None
    lagging: set[str] = dataclasses.field(default_factory=set)
    #: The readmit annotation this loop has applied and told of, until it is gone.
    readmitted: list[str] | None = None
    #: Failed passes in a row (the backoff's exponent) and the last rejection told of.
    failures: int = 0
    rejection: str | None = None

    def backoff(self, cfg: OperatorConfig) -> float:
        """Seconds until the next attempt after this many failures in a row: exponential
        with jitter, so many jobs failing at once do not retry in step."""
        self.failures += 1
        return min(cfg.retry_max_seconds, cfg.retry_seconds * 2 ** (self.failures - 1)) * random.uniform(0.8, 1.2)


async def run_job(key: tuple[str, str], memo: kopf.Memo, pods_by_job: kopf.Index, node_index: kopf.Index, logger: logging.Logger) -> None:
    """The job's loop: a pass, then wait for a wake-up or the next resync, until cancelled."""
    wake = memo.wakeups.setdefault(key, asyncio.Event())
    memory = _Memory(uid=memo.bodies[key].get("metadata", {}).get("uid"))
    cfg: OperatorConfig = memo.config
    try:
        while True:
            wake.clear()
            body = memo.bodies[key]
            if (uid := body.get("metadata", {}).get("uid")) != memory.uid:
                memory = _Memory(uid=uid)  # deleted and created again under this name: a new job
            try:
                delay = await _one_pass(body, key, memo, memory, pods_by_job, node_index, logger)
            except Exception:  # a bug must not end the job's loop for good
                logger.exception("Reconcile pass failed unexpectedly; retrying")
                delay = memory.backoff(cfg)
            await _wait(memo, key, wake, delay if memory.failures else min(delay, cfg.resync_seconds), backing_off=memory.failures > 0)
    finally:
        memo.wakeups.pop(key, None)


async def _wait(memo: kopf.Memo, key: tuple[str, str], wake: asyncio.Event, seconds: float, *, backing_off: bool) -> None:
    """Until ``seconds`` pass or a wake-up comes. While backing off after failures, only a
    new spec (``metadata.generation``) cuts the wait short: the job's own status writes and
    its pods' events would otherwise retry at once, every time."""
    def spec() -> tuple:
        meta = (memo.bodies.get(key) or {}).get("metadata", {})
        return meta.get("uid"), meta.get("generation")

    before = spec()
    deadline = asyncio.get_running_loop().time() + seconds
    while (left := deadline - asyncio.get_running_loop().time()) > 0:
        try:
            await asyncio.wait_for(wake.wait(), timeout=left)
        except TimeoutError:
            return
        if not backing_off or spec() != before:
            return
        wake.clear()


async def _one_pass(body, key, memo, memory, pods_by_job, node_index, logger) -> float:
    """One pass; returns seconds until the next. Errors end here as Kopf error values."""
    cfg: OperatorConfig = memo.config
    began = time.monotonic()
    try:
        try:
            pods = [dict(p) for p in pods_by_job.get(key, [])]
            nodes = [next(iter(store)) for store in node_index.values()]
            snapshot = copy.deepcopy(dict(body))
            loop = asyncio.get_running_loop()
            events, requeue = await loop.run_in_executor(memo.executor, _reconcile_sync, snapshot, pods, nodes, memo, memory)
        finally:
            memo.metrics.reconcile_seconds.observe(time.monotonic() - began)
        for event in events:
            kopf.event(body, type=str(event.type), reason=str(event.reason), message=event.message)
        return requeue if requeue is not None else cfg.resync_seconds
    except kopf.TemporaryError as e:
        memo.metrics.reconcile_errors.labels(reason="temporary").inc()
        delay = memory.backoff(cfg)
        logger.info(f"Retrying in {delay:.1f}s: {e}")
        return delay
    except kopf.PermanentError as e:
        memo.metrics.reconcile_errors.labels(reason="permanent").inc()
        kopf.warn(body, reason="ReconcileFailed", message=str(e))
        return cfg.resync_seconds


def _reconcile_sync(doc: dict[str, Any], pods: list[dict], nodes: list[dict], memo: kopf.Memo, memory: _Memory):
    """Observe, reconcile, act, write status: runs in a worker thread (blocking client)."""
    try:
        return _reconcile_job(doc, pods, nodes, memo, memory)
    except ApiFailure as e:
        if e.retryable:
            raise kopf.TemporaryError(str(e)) from None
        raise kopf.PermanentError(str(e)) from None


def _reconcile_job(doc, pods, nodes, memo, memory: _Memory):
    cfg: OperatorConfig = memo.config
    meta = doc.get("metadata", {})
    if meta.get("deletionTimestamp"):
        return [], None  # children go with the ownerReferences; start nothing now
    job, problems = validate(doc)
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
    status = memory.status or server_status
    readmit = readmit_request(meta)
    # The nodes avoided before this pass: the status written may still lack a readmit.
    avoided_before = list(dict.fromkeys([*status.avoided_nodes, *server_status.avoided_nodes]))
    avoided = [n for n in status.avoided_nodes if n not in readmit]
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
    backend = KubernetesBackend(
        memo.api, cfg.kubernetes, owner, spec, mine,
        node_ready={n["metadata"]["name"]: _ready(n) for n in nodes},
        known_checkpoint=status.last_checkpoint, avoided_nodes=avoided, request_json=memo.request_json,
        foreign=foreign, expected=_expected_ranks(status, now, cfg.kubernetes.vanished_after_s),
    )
    result = reconcile(ref, spec, plan, status, backend.observe(now))
    notes: list[Event] = []
    for action in result.actions:
        if isinstance(action, StopGeneration):
            backend.stop(action)
        elif isinstance(action, SetShares):
            backend.set_shares(action)
        elif isinstance(action, ReplaceRank):
            notes += backend.replace(action)
    # The core passes avoidedNodes through; the backend adds a replaced straggler's node.
    result.status.avoided_nodes = backend.avoided_nodes
    if starts := [a for a in result.actions if isinstance(a, StartGeneration)]:
        # Intent first: the status names the new generation before any of its pods exists,
        # so an operator that dies in between finds them as its own after a restart.
        intent = result.status.to_wire()
        try:
            _write_status(memo, owner, memory, intent)
            for action in starts:
                backend.start(action)
        except ApiFailure as e:
            if not e.retryable:
                refused = _rejected(memo, owner, job.metadata.generation, status, memory, e)
                memo.metrics.jobs.update(owner.namespace, owner.name, memory.status, str(spec.runtime))
                return refused
            _take_back(memo, owner, memory, intent, status.to_wire())
            raise
    # Everything is applied: from now on the computed status is the truth, even if the
    # write below fails (the next pass retries the write and does not redo the actions).
    memory.status = result.status
    wire = result.status.to_wire()
    requeue = result.requeue_after
    if wire != memory.written:
        try:
            _write_status(memo, owner, memory, wire)
        except ApiFailure as e:
            if not e.retryable:
                raise
            # The events of this pass still go out; the next pass writes the status again.
            log.info(f"Status of {owner.namespace}/{owner.name} not written, retrying: {e}")
            requeue = cfg.retry_seconds
    if readmit and wire == memory.written:
        notes += _readmitted(memo.api, owner, readmit, avoided_before, memory)
    elif not readmit:
        memory.readmitted = None
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


def _write_status(memo, owner: render.Owner, memory: _Memory, wire: dict[str, Any], *, old: dict[str, Any] | None = None) -> None:
    """Write the status, conditional on the version it was computed from. A 409 means
    someone else wrote in between: forget what this loop computed, read the object again,
    and let the next pass start from the server's status."""
    if wire == memory.written and old is None:
        return
    try:
        rv = patch_status(memo.api, owner.namespace, owner.name, old if old is not None else memory.written or {}, wire, memory.rv)
    except ApiFailure as e:
        if e.status == 409:
            memory.status, memory.written = None, None
            memory.lagging.clear()
            if (fresh := read_job(memo.api, owner.namespace, owner.name)) is not None:
                memo.bodies[(owner.namespace, owner.name)] = fresh
        raise
    if memory.rv is not None:
        memory.lagging.add(memory.rv)
    memory.written, memory.rv = wire, rv


def _take_back(memo, owner: render.Owner, memory: _Memory, intent: dict[str, Any], before: dict[str, Any]) -> None:
    """Nothing of the new generation started: write the status from before the intent back,
    even when the intent's write seemed to fail (its response may be what was lost). Best
    effort: if this fails too, the generation's missing pods are noticed after
    ``vanished_after_s`` and it starts again."""
    try:
        _write_status(memo, owner, memory, before, old={**(memory.written or {}), **intent})
    except ApiFailure as e:
        log.info(f"Status of {owner.namespace}/{owner.name} not taken back: {e}")


def _rejected(memo, owner: render.Owner, generation: int, status: TrainingJobStatus, memory: _Memory, error: ApiFailure):
    """The API server refused the generation's objects (422 invalid, 403 forbidden): nothing
    started. Say so in one condition with the server's message, tell it once, and try again
    with exponential backoff (a fixed template or a lifted policy lets it through)."""
    memo.metrics.reconcile_errors.labels(reason="permanent").inc()
    now = datetime.datetime.now(datetime.timezone.utc)
    status = status.model_copy(deep=True)
    message = f"The API server refused this job's pods: {error}"
    status.conditions = set_condition(status.conditions, ConditionType.RUNNING, False, Reason.API_REJECTED, message,
                                      now=rfc3339(now), observed_generation=generation)
    _write_status(memo, owner, memory, status.to_wire())
    memory.status = status
    told, memory.rejection = memory.rejection == message, message
    return ([] if told else [Event(EventType.WARNING, Reason.API_REJECTED, message)]), memory.backoff(memo.config)


def _readmitted(api, owner: render.Owner, readmit: list[str], avoided_before: list[str], memory: _Memory) -> list[Event]:
    """The status no longer lists the readmitted nodes: tell once, and remove the annotation
    (retried by the next pass if that fails; the readmit itself is already written)."""
    events = [] if memory.readmitted == readmit else readmit_events(readmit, avoided_before)
    memory.readmitted = readmit
    try:
        clear_annotation(api, owner.namespace, owner.name, READMIT_ANNOTATION)
    except ApiFailure as e:
        log.info(f"Annotation {READMIT_ANNOTATION} of {owner.namespace}/{owner.name} not removed, retrying: {e}")
    return events


# ----------------------------------------------------------------------------- running


async def serve(
    cfg: OperatorConfig,
    *,
    namespaces: list[str],
    liveness_endpoint: str | None,
    metrics_port: int | None,
    lease: Any | None,
) -> None:
    """``shardwright operator``: lead (Lease), then run Kopf until stopped or the lease is lost.

    ``namespaces`` empty: the whole cluster. Kopf peering is off (``standalone``): the
    Lease decides who runs, and only the leader serves the webhook and the metrics.
    Raises ``LeaseLost`` once Kopf has stopped because we no longer lead (the process
    exits non-zero and Kubernetes starts a fresh candidate).
    """
    memo = make_memo(cfg)
    if lease is not None:
        await lease.acquire()
    lost = asyncio.Event()
    holder = asyncio.create_task(lease.hold(lost)) if lease is not None else None
    if metrics_port is not None:
        memo.metrics.serve(metrics_port, cfg.bind_address)
    try:
        await kopf.operator(
            registry=REGISTRY, memo=memo, standalone=True, stop_flag=lost,
            clusterwide=not namespaces, namespaces=namespaces, liveness_endpoint=liveness_endpoint,
        )
    finally:
        if holder is not None:
            holder.cancel()
    if lost.is_set():
        raise LeaseLost(f"stopped reconciling: the leader Lease {lease.settings.namespace}/{lease.settings.name} is lost")
