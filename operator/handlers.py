"""Kopf handlers: thin adapters from cluster events to the pure reconcile core.

Each TrainingJob gets one loop (an asyncio task of this operator, started by the job's
first watch event and cancelled when the object is gone) that observes the job's pods (from
a Kopf index, no list requests; the API server sends only this operator's pods, by a
server-side label selector), calls the same ``controller.reconcile`` the local runner
calls, applies the actions through the Kubernetes backend, and writes ``.status`` once per
pass, only when it changed. Pod and TrainingJob events wake the loop at once; otherwise it
runs every ``resync_seconds`` (rank 0's ``/status`` is polled then) or when the core asks
(backoff); a finished job (Complete, Failed) runs only when woken. No change-handler
chains: after an operator restart the loop simply resumes from
the object's status and the pods it sees, so nothing is lost or duplicated. Not a Kopf
daemon: Kopf puts its finalizer on every object a daemon runs for, and with the operator
stopped or uninstalled, deleting a job or its namespace would hang; children go by their
ownerReferences instead.

One pass is ``jobpass.run_pass`` (in a worker thread); its status bookkeeping is
``statuswrite``. Kopf's TemporaryError/PermanentError from a pass end in this loop as backoff.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import copy
import logging
import math
import os
import threading
import time
from typing import Any

import kopf
from kubernetes import client, config as kube_config

from shardwright.operator.api import GROUP, VERSION, TrainingJob, validate
from shardwright.operator import probes, webhook
from shardwright.operator.backends import probe
from shardwright.operator.backends import pods as render
from shardwright.operator.backends import podstatus
from shardwright.operator.certrotation import CertRotator, RotationSettings
from shardwright.operator.jobpass import run_pass
from shardwright.operator.lease import FencedApiClient, LeaseLost
from shardwright.operator.metrics import OperatorMetrics
from shardwright.operator.operatorconfig import OperatorConfig
from shardwright.operator.statuswrite import StatusMemory

REGISTRY = kopf.OperatorRegistry()
PLURAL = TrainingJob.PLURAL
#: Kopf's finalizer, renamed into our group (ANCHORS: finalizers are shardwright.io/<purpose>).
FINALIZER = "shardwright.io/operator"
MANAGED = {"app.kubernetes.io/managed-by": render.MANAGED_BY}
#: The pods the API server sends this operator: its own (the job label names the loop).
POD_SELECTOR = ",".join([*(f"{k}={v}" for k, v in MANAGED.items()), render.LABEL_JOB])
log = logging.getLogger(__name__)
#: Seconds a pass may read a list of the nodes made for an earlier pass (see ``_nodes``).
NODES_FRESH_S = 1.0


def make_memo(cfg: OperatorConfig, *, api: client.ApiClient | None = None, request_json=probe.request_json) -> kopf.Memo:
    """Operator-wide state; Kopf shallow-copies it per object, so these are shared.
    ``request_json``: how ranks' telemetry is asked (tests answer for the ranks)."""
    executor = concurrent.futures.ThreadPoolExecutor(cfg.reconcile_threads, thread_name_prefix="reconcile")
    return kopf.Memo(config=cfg, api=api, request_json=request_json, metrics=OperatorMetrics(), wakeups={}, executor=executor,
                     jobs={}, bodies={}, fenced=threading.Event(), nodes={"at": -math.inf, "list": []})


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
    return FencedApiClient(configuration)


# ----------------------------------------------------------------------------- settings


class NoEssence(kopf.AnnotationsDiffBaseStorage):
    """Kopf builds every event's "essence" (a deep copy of the whole object, status and all)
    for change and daemon handlers to diff; this operator has neither (a test holds it to
    that), so the essence is empty: at 1,000 nodes and jobs the copies were 12 % of the event
    loop's busy time (docs/benchmarks-operator.md)."""

    def build(self, *, body: kopf.Body, extra_fields: Any = None) -> kopf.BodyEssence:
        return kopf.BodyEssence()


@kopf.on.startup(registry=REGISTRY)
def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    cfg: OperatorConfig = memo.config
    settings.persistence.finalizer = FINALIZER
    # Kopf keeps handler progress and the last-handled spec in annotations by default (they
    # can outgrow the 256 KiB annotation limit). This operator has no change handlers, so
    # neither is written (nor is the spec's essence built); its state lives under our group.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="shardwright.io")
    settings.persistence.diffbase_storage = NoEssence(prefix="shardwright.io", key="last-handled")
    settings.posting.level = logging.WARNING  # our own events are explicit; only warnings from logs
    settings.posting.reporting_component = "shardwright-operator"
    settings.execution.max_workers = 16  # the Kubernetes client is sync: API calls run in threads
    _watch_settings(settings, cfg)
    if memo.api is None:
        memo.api = api_client()


def _watch_settings(settings: kopf.OperatorSettings, cfg: OperatorConfig) -> None:
    """Server-side selection and timeouts of Kopf's watches. Kopf's ``labels=`` filters act
    on this side: without the selector every pod change in the cluster would reach this
    process. Nodes are all watched: placement reads every node's readiness and GPUs, and no
    label or field selects "has GPUs" or "runs a pod of ours"; the node index keeps only the
    fields placement reads."""
    settings.watching.label_selectors["v1", "pods"] = POD_SELECTOR
    settings.watching.server_timeout = cfg.watch.server_timeout_s
    settings.watching.client_timeout = cfg.watch.client_timeout_s
    settings.watching.connect_timeout = cfg.watch.connect_timeout_s
    settings.watching.chunk_size = cfg.watch.list_chunk
    settings.networking.connect_timeout = cfg.watch.connect_timeout_s
    settings.networking.request_timeout = cfg.watch.request_timeout_s


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


# ----------------------------------------------------------------------------- indexes and wake-ups


# The index and event handlers are coroutines: Kopf runs a plain function in a thread of
# its executor (a hop per event), and an asyncio.Event set from another thread is not
# thread-safe (the loop may sleep on through it).
@kopf.index("v1", "pods", labels=MANAGED, registry=REGISTRY)
async def pods_by_job(body: kopf.Body, namespace: str, labels: kopf.Labels, **_: Any) -> dict:
    return {(namespace, labels.get(render.LABEL_JOB)): podstatus.summarize(dict(body))}


@kopf.index("v1", "nodes", registry=REGISTRY)
async def node_index(name: str, body: kopf.Body, **_: Any) -> dict:
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


@kopf.on.event("v1", "pods", labels=MANAGED, registry=REGISTRY)
async def pod_changed(namespace: str, labels: kopf.Labels, memo: kopf.Memo, **_: Any) -> None:
    _wake(memo, (namespace, labels.get(render.LABEL_JOB)))


@kopf.on.event(GROUP, VERSION, PLURAL, registry=REGISTRY)
async def job_changed(
    event: kopf.RawEvent, body: kopf.Body, namespace: str, name: str, memo: kopf.Memo,
    pods_by_job: kopf.Index, node_index: kopf.Index, logger: logging.Logger, **_: Any,
) -> None:
    """Hand the job's latest body to its loop, starting the loop on the first event (also
    the listing after an operator start) and ending it when the object is gone."""
    key = (namespace, name)
    if memo.fenced.is_set():  # the Lease is lost: Kopf is winding down; start nothing
        return
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


def admit(body: dict, old: dict | None = None) -> None:
    """The admission webhook's judgement (``webhook.respond`` calls it on every replica):
    the same validation and messages as ``shardwright validate``. An update is judged only
    when it changes the spec: a label, annotation, finalizer or status change of a job that
    today's rules would refuse (written before them, or by an older operator) is never
    refused, so its deletion and the operator's own writes always go through. Nor is an
    update judged on the name, as the CRD's rule judges it at create only (a name never
    changes): a job named before that rule keeps taking edits."""
    doc = {k: v for k, v in dict(body).items() if k != "status"}
    if old is not None and dict(old).get("spec") == doc.get("spec"):
        return
    if old is not None and isinstance(doc.get("metadata"), dict):
        doc["metadata"] = {**doc["metadata"], "name": "updated-job"}  # any valid name: the rest is checked
    _, problems = validate(doc)
    if problems:
        raise kopf.AdmissionError("; ".join(str(p) for p in problems), code=422)


# ----------------------------------------------------------------------------- the job loop


async def run_job(key: tuple[str, str], memo: kopf.Memo, pods_by_job: kopf.Index, node_index: kopf.Index, logger: logging.Logger) -> None:
    """The job's loop: a pass, then wait for a wake-up or the next resync, until cancelled."""
    wake = memo.wakeups.setdefault(key, asyncio.Event())
    memory = StatusMemory(uid=memo.bodies[key].get("metadata", {}).get("uid"))
    cfg: OperatorConfig = memo.config
    try:
        while True:
            wake.clear()
            body = memo.bodies[key]
            if (uid := body.get("metadata", {}).get("uid")) != memory.uid:
                memory = StatusMemory(uid=uid)  # deleted and created again under this name: a new job
            try:
                delay = await _one_pass(body, key, memo, memory, pods_by_job, node_index, logger)
            except Exception:  # a bug must not end the job's loop for good
                logger.exception("Reconcile pass failed unexpectedly; retrying")
                delay = memory.backoff(cfg)
            if not memory.failures:
                delay = min(delay, _resync(cfg, memory, pods_by_job.get(key, [])))
            await _wait(memo, key, wake, delay, backing_off=memory.failures > 0)
    finally:
        memo.wakeups.pop(key, None)


def _resync(cfg: OperatorConfig, memory: StatusMemory, pods) -> float:
    """Seconds between passes when nothing happens: none for a finished job (its pods' and
    its own events still wake it; a TTL is a requeue of its own), unless one of its pods is
    still being deleted (one stuck on a lost node is force-deleted after a while)."""
    finished = memory.status is not None and memory.status.phase.terminal
    return math.inf if finished and not any(p.get("deleting") for p in pods) else cfg.resync_seconds


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
            await asyncio.wait_for(wake.wait(), timeout=None if math.isinf(left) else left)
        except TimeoutError:
            return
        if not backing_off or spec() != before:
            return
        wake.clear()


def _nodes(memo: kopf.Memo, node_index: kopf.Index) -> list[dict]:
    """Every node's summary, listed afresh when a node came or went or the list is older
    than ``NODES_FRESH_S``. Listing 1,000 nodes on the event loop for each pass (hundreds a
    second at scale) held the watches back (bench/operator_scale_kwok.py)."""
    cache, now = memo.nodes, time.monotonic()  # one dict for every job's (shallow-copied) memo
    if now - cache["at"] > NODES_FRESH_S or len(cache["list"]) != len(node_index):
        cache["list"], cache["at"] = [next(iter(store)) for store in node_index.values()], now
    return cache["list"]


async def _one_pass(body, key, memo, memory, pods_by_job, node_index, logger) -> float:
    """One pass; returns seconds until the next. Errors end here as Kopf error values."""
    cfg: OperatorConfig = memo.config
    began = time.monotonic()
    try:
        try:
            pods = [dict(p) for p in pods_by_job.get(key, [])]
            nodes = _nodes(memo, node_index)
            snapshot = copy.deepcopy(dict(body))
            loop = asyncio.get_running_loop()
            events, requeue = await loop.run_in_executor(memo.executor, run_pass, snapshot, pods, nodes, memo, memory)
        finally:
            memo.metrics.reconcile_seconds.observe(time.monotonic() - began)
        for event in events:
            kopf.event(body, type=str(event.type), reason=str(event.reason), message=event.message)
        return requeue if requeue is not None else math.inf  # run_job bounds it by the resync
    except kopf.TemporaryError as e:
        memo.metrics.reconcile_errors.labels(reason="temporary").inc()
        delay = memory.backoff(cfg)
        logger.info(f"Retrying in {delay:.1f}s: {e}")
        return delay
    except kopf.PermanentError as e:
        memo.metrics.reconcile_errors.labels(reason="permanent").inc()
        kopf.warn(body, reason="ReconcileFailed", message=str(e))
        return cfg.resync_seconds


# ----------------------------------------------------------------------------- running


async def serve(
    cfg: OperatorConfig,
    *,
    namespaces: list[str],
    metrics_port: int | None,
    lease: Any | None,
    health_port: int | None = None,
    certs: RotationSettings | None = None,
) -> None:
    """``shardwright operator``: serve the webhook and the probes, lead (Lease), then run
    Kopf until stopped or the lease is lost.

    ``namespaces`` empty: the whole cluster. Kopf peering is off (``standalone``): the
    Lease decides who reconciles (and serves the metrics). Every replica serves the
    admission webhook (``cfg.webhook``; its certificate kept current from ``certs``, else
    the files in ``cfg``) and ``/healthz``, ``/readyz`` on ``health_port``, from before it
    leads, so a standby answers the API server while the leader is down.
    Raises ``LeaseLost`` once Kopf has stopped because we no longer lead (the process
    exits non-zero and Kubernetes starts a fresh candidate).
    """
    memo = make_memo(cfg)
    admission = webhook.AdmissionServer(admit, addr=cfg.bind_address, port=cfg.webhook_port, certfile=cfg.webhook_certfile,
                                        keyfile=cfg.webhook_pkeyfile, insecure=cfg.webhook_insecure) if cfg.webhook else None
    rotator = CertRotator(api_client(), certs) if admission is not None and certs is not None else None
    serving = asyncio.create_task(webhook.keep_serving(admission, rotator)) if admission is not None else None
    health = None
    try:
        if health_port is not None:
            health = await probes.serve(cfg.bind_address, health_port, admission.serves_current_certificate if admission else None)
        await _lead_and_reconcile(memo, namespaces=namespaces, metrics_port=metrics_port, lease=lease)
    finally:
        if serving is not None:
            serving.cancel()
            await asyncio.gather(serving, return_exceptions=True)
        if health is not None:
            await health.cleanup()


async def _lead_and_reconcile(memo: kopf.Memo, *, namespaces: list[str], metrics_port: int | None, lease: Any | None) -> None:
    """Wait for the Lease, then run Kopf (and serve the metrics) for as long as we lead."""
    cfg: OperatorConfig = memo.config
    if lease is not None:
        await lease.acquire()
    lost = asyncio.Event()
    holder = asyncio.create_task(_lead(lease, lost, memo)) if lease is not None else None
    if metrics_port is not None:
        memo.metrics.serve(metrics_port, cfg.bind_address)
    try:
        await kopf.operator(
            registry=REGISTRY, memo=memo, standalone=True, stop_flag=lost,
            clusterwide=not namespaces, namespaces=namespaces,
        )
    finally:
        if holder is not None:
            holder.cancel()
            if not lost.is_set():  # a clean exit: the next candidate need not wait out the Lease
                await asyncio.to_thread(lease.release)
    if lost.is_set():
        raise LeaseLost(f"stopped reconciling: the leader Lease {lease.settings.namespace}/{lease.settings.name} is lost")


async def _lead(lease: Any, lost: asyncio.Event, memo: kopf.Memo) -> None:
    """Renew the Lease; the moment it is lost, fence: no job loop runs on and no request of
    this operator is sent any more, before Kopf has wound down (which takes seconds)."""
    await lease.hold(lost)
    memo.fenced.set()
    if isinstance(memo.api, FencedApiClient):
        memo.api.fence.set()
    for task in memo.jobs.values():
        task.cancel()
