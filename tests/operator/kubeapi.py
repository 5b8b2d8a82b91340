"""The operator on the local Kubernetes control plane (e2e/cluster): real Kopf against a
real kube-apiserver, etcd, scheduler and garbage collector, one namespace per test.

There are no nodes with a kubelet, so the test plays the parts that no process plays:

- the kubelet's status writes, :func:`set_pod_phase` (the pod's ``status`` subresource);
  a pod the kubelet runs is on its node, so an unbound pod is bound to the test's node first;
- the scheduler's decision where the test needs one, :func:`bind_pod` (``pods/binding``);
  the scheduler itself runs and leaves the operator's pods Pending (no node fits them);
- the kubelet's end of a graceful deletion, :class:`Kubelet` (the containers stop at once);
- the ranks' HTTP telemetry, :class:`Telemetry`.

The operator's own requests go through :class:`RecordingClient`, so a test can say what the
operator asked for (a cordon sent once, no pod create after a restart) where the server's
state cannot tell (a repeated identical patch changes nothing there).
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import dataclasses
import json
import ssl
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import kopf
import pytest
import yaml

from e2e.cluster.controlplane import ControlPlane
from .kubehttp import EVENTS, NODES, PODS, TJ, Api, ApiError, RecordingClient, Request, path
from shardwright.operator import handlers
from shardwright.operator.backends import pods as render
from shardwright.operator.backends.kubernetes import KubernetesSettings

ROOT = Path(__file__).resolve().parents[2]


def tiny_job(name: str = "tiny", **spec: Any) -> dict[str, Any]:
    doc = yaml.safe_load((ROOT / "examples" / "tiny-train.yaml").read_text())
    doc["metadata"] = {"name": name}
    doc["spec"].update(spec)
    return doc


# ----------------------------------------------------------------------------- the test's cluster


@dataclasses.dataclass
class Cluster:
    """One test's view of the control plane: its namespace, its nodes, the operator's client."""

    cp: ControlPlane
    namespace: str
    api: Api
    client: RecordingClient
    #: The node the test's kubelet runs pods on (see :func:`set_pod_phase`).
    node: str
    kubelet: Kubelet = dataclasses.field(init=False)
    #: Cluster-scoped objects this test made (nodes, webhook configurations), deleted after it.
    made: list[tuple[str, str]] = dataclasses.field(default_factory=list)

    def __post_init__(self) -> None:
        self.kubelet = Kubelet(self)

    def path(self, resource: str, name: str | None = None, sub: str | None = None) -> str:
        return path(resource, self.namespace, name, sub)

    @property
    def requests(self) -> list[Request]:
        return list(self.client.requests)


@pytest.fixture()
async def cluster(kube: ControlPlane, namespace: str):
    """The control plane with this test's namespace, a Ready node without GPUs (the one
    :func:`set_pod_phase` runs pods on) and the :class:`Kubelet` ending deleted pods. The
    operator reads ``KUBECONFIG`` (the ``kube`` fixture's: the admin token)."""
    c = Cluster(kube, namespace, Api(kube), RecordingClient(handlers.api_client().configuration), node=f"{namespace}-node")
    await add_node(c, c.node)
    kubelet = asyncio.create_task(c.kubelet.run())
    try:
        yield c
    finally:
        kubelet.cancel()
        await asyncio.gather(kubelet, return_exceptions=True)
        await asyncio.to_thread(_clean_up, c)


def _clean_up(c: Cluster) -> None:
    """Delete what is not namespaced; the namespace goes by itself (jobs carry no finalizer)."""
    for resource, name in reversed(c.made):
        with contextlib.suppress(ApiError):
            c.api.request("DELETE", path(resource, name=name))


async def add_node(c: Cluster, name: str, *, gpus: int = 0, labels: dict[str, str] | None = None) -> str:
    """A Ready Node object with no kubelet behind it (the node lifecycle controller marks it
    Unknown after 40 s without heartbeats). Nothing of the operator's fits on it (no
    allocatable CPU, memory or pod slots), so the scheduler binds nothing there."""
    resources = {"nvidia.com/gpu": str(gpus)} if gpus else {}
    status = {"capacity": resources, "allocatable": resources, "conditions": [{"type": "Ready", "status": "True", "reason": "Test"}]}
    node = {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "labels": labels or {}}}
    await asyncio.to_thread(c.api.request, "POST", path(NODES), node)
    c.made.append((NODES, name))
    await asyncio.to_thread(c.api.merge, path(NODES, name=name, sub="status"), {"status": status})
    return name


class Kubelet:
    """The kubelet's end of a graceful deletion, for every pod bound to a node in the
    test's namespace: its containers stop at once, and the kubelet confirms the deletion
    (a delete with grace 0 and the pod's uid). ``stopped``: (pod, grace period it was given).
    A pod deleted with grace 0, or never bound, is gone at once without a kubelet."""

    def __init__(self, c: Cluster) -> None:
        self.c = c
        self.stopped: list[tuple[str, int]] = []
        self._ended: set[str] = set()
        #: Pods whose containers are still stopping (:meth:`hold`), None: they stop at once.
        self._held: list[dict[str, Any]] | None = None

    def hold(self) -> None:
        """From now on containers take their time to stop: pods stay Terminating until :meth:`release`."""
        self._held = []

    async def release(self) -> None:
        """The held containers have stopped: confirm their pods' deletion."""
        held, self._held = self._held or [], None
        for meta in held:
            await self._confirm(meta)

    async def run(self) -> None:
        ctx = ssl.create_default_context(cafile=str(self.c.cp.pki.ca_cert))
        headers = {"Authorization": f"Bearer {self.c.cp.token}"}
        async with aiohttp.ClientSession(headers=headers, read_bufsize=2**20) as session:
            while True:
                listed = await asyncio.to_thread(self.c.api.request, "GET", self.c.path(PODS))
                for pod in listed["items"]:
                    await self._seen(pod)
                params = {"watch": "1", "resourceVersion": listed["metadata"]["resourceVersion"], "timeoutSeconds": "60"}
                try:
                    async with session.get(self.c.api.server + self.c.path(PODS), params=params, ssl=ctx) as stream:
                        async for line in stream.content:
                            event = json.loads(line)
                            if event["type"] == "ERROR":  # e.g. 410 Gone: list again
                                break
                            await self._seen(event["object"], gone=event["type"] == "DELETED")
                except aiohttp.ClientError:
                    await asyncio.sleep(0.2)

    async def _seen(self, pod: dict[str, Any], *, gone: bool = False) -> None:
        meta = pod["metadata"]
        if not meta.get("deletionTimestamp") or not pod["spec"].get("nodeName") or meta["uid"] in self._ended:
            return
        self._ended.add(meta["uid"])
        self.stopped.append((meta["name"], meta.get("deletionGracePeriodSeconds", 0)))
        if gone:  # force-deleted (grace 0): removed before any kubelet could stop it
            return
        if self._held is not None:
            self._held.append(meta)
        else:
            await self._confirm(meta)

    async def _confirm(self, meta: dict[str, Any]) -> None:
        body = {"kind": "DeleteOptions", "apiVersion": "v1", "gracePeriodSeconds": 0, "preconditions": {"uid": meta["uid"]}}
        with contextlib.suppress(ApiError):
            await asyncio.to_thread(self.c.api.request, "DELETE", self.c.path(PODS, meta["name"]), body)


# ----------------------------------------------------------------------------- reading


def live(c: Cluster, resource: str, selector: str | None = None) -> dict[str, dict[str, Any]]:
    """Objects of ``resource`` in the test's namespace that exist now (Terminating too), by name."""
    listed = c.api.get(c.path(resource), **({"labelSelector": selector} if selector else {}))
    return {o["metadata"]["name"]: o for o in listed["items"]}


def pods_of(c: Cluster, generation: int, job: str = "tiny") -> dict[str, dict[str, Any]]:
    return live(c, PODS, f"{render.LABEL_JOB}={job},{render.LABEL_GENERATION}={generation}")


def get(c: Cluster, resource: str, name: str) -> dict[str, Any] | None:
    return c.api.get(c.path(resource, name))


def job_status(c: Cluster, name: str = "tiny") -> dict[str, Any]:
    return (get(c, TJ, name) or {}).get("status") or {}


def posted_events(c: Cluster, reason: str) -> list[str]:
    """Messages of the events posted in the namespace with ``reason``, oldest first."""
    items = c.api.get(c.path(EVENTS), fieldSelector=f"reason={reason}")["items"]
    return [e.get("message", "") for e in sorted(items, key=lambda e: e["metadata"]["creationTimestamp"])]


def sent(c: Cluster, method: str, where: Callable[[str], bool]) -> list[Request]:
    """The operator's requests with ``method`` whose path ``where`` accepts."""
    return [r for r in c.requests if r.method == method and where(r.path)]


def pod_creates(c: Cluster) -> int:
    return len(sent(c, "POST", lambda p: p.endswith("/pods")))


# ----------------------------------------------------------------------------- acting


def refused(c: Cluster, resource: str, body: dict[str, Any], because: str) -> bool:
    """Create ``body``: True when the API server refuses it with ``because`` in its answer;
    an object it creates instead is deleted again (False). Probes whether an admission
    webhook or policy just registered is in effect yet."""
    try:
        c.api.request("POST", c.path(resource), body)
    except ApiError as e:
        return because in str(e)
    c.api.request("DELETE", c.path(resource, body["metadata"]["name"]))
    return False


async def create_job(c: Cluster, doc: dict[str, Any]) -> dict[str, Any]:
    """Create the TrainingJob; returns the object as the server stored it (uid and all)."""
    return await asyncio.to_thread(c.api.request, "POST", c.path(TJ), doc)


async def patch_job(c: Cluster, name: str, patch: dict[str, Any]) -> None:
    await asyncio.to_thread(c.api.merge, c.path(TJ, name), patch)


async def delete(c: Cluster, resource: str, name: str) -> None:
    await asyncio.to_thread(c.api.request, "DELETE", c.path(resource, name))


async def bind_pod(c: Cluster, name: str, node: str) -> None:
    """Play the scheduler: bind pod ``name`` to ``node`` (``pods/binding``, as kube-scheduler does)."""
    binding = {"apiVersion": "v1", "kind": "Binding", "metadata": {"name": name}, "target": {"apiVersion": "v1", "kind": "Node", "name": node}}
    await asyncio.to_thread(c.api.request, "POST", c.path(PODS, name, "binding"), binding)


async def set_pod_phase(c: Cluster, name: str, phase: str, *, exit_code: int | None = None, reason: str | None = None,
                        ip: str | None = None, waiting: str | None = None) -> None:
    """Play the kubelet: give pod ``name`` a phase (and how its container ended). A pod
    that nobody bound is bound to the test's node first: a kubelet reports only its own pods."""
    pod = await asyncio.to_thread(c.api.request, "GET", c.path(PODS, name))
    if not pod["spec"].get("nodeName"):
        await bind_pod(c, name, c.node)
    status: dict[str, Any] = {"phase": phase}
    if ip:
        status["podIP"] = ip
    spec = pod["spec"]["containers"][0]
    container = {"name": spec["name"], "image": spec["image"], "imageID": "", "ready": phase == "Running", "restartCount": 0}
    if exit_code is not None:
        status["containerStatuses"] = [container | {"state": {"terminated": {"exitCode": exit_code, "reason": reason or "Error"}}}]
    elif waiting:
        status["containerStatuses"] = [container | {"state": {"waiting": {"reason": waiting, "message": "back-off pulling image"}}}]
    await asyncio.to_thread(c.api.merge, c.path(PODS, name, "status"), {"status": status})


async def run_all(c: Cluster, generation: int, *, step: int | None = None, telemetry: Telemetry | None = None) -> list[str]:
    """Every pod of ``generation`` Running; rank 0 reports ``step`` and a checkpoint at it."""
    names = sorted(pods_of(c, generation))
    for i, name in enumerate(names):
        await set_pod_phase(c, name, "Running", ip=f"10.0.{generation}.{i}")
    if telemetry is not None and step is not None:
        telemetry.answers[f"10.0.{generation}.0"] = {
            "generation": generation, "step": step, "loss": 1.5, "tokensPerSecond": 1000.0, "stepSeconds": [0.1, 0.1],
            "lastCheckpoint": {"step": step, "path": f"/checkpoints/{c.namespace}/tiny/step-{step:08d}", "worldSize": 2, "layout": "dp=2,sp=1"},
        }
    return names


# ----------------------------------------------------------------------------- the operator


@dataclasses.dataclass
class Telemetry:
    """The ranks' telemetry as the tests play it: what rank 0's ``/status`` answers, per pod
    IP, every POST the operator made (``/control``), as (url, payload), and the token it sent
    with each request."""

    answers: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    posts: list[tuple[str, dict[str, Any]]] = dataclasses.field(default_factory=list)
    tokens: list[str | None] = dataclasses.field(default_factory=list)

    def __call__(self, url: str, payload: dict[str, Any] | None = None, *, token: str | None = None) -> dict[str, Any] | None:
        self.tokens.append(token)
        ip = url.split("//")[1].split(":")[0]
        if payload is not None:
            self.posts.append((url, copy.deepcopy(payload)))
            return {} if ip in self.answers else None
        return copy.deepcopy(self.answers.get(ip))


FAST = handlers.OperatorConfig(
    kubernetes=KubernetesSettings(startup_timeout_s=None, force_delete_after_s=1.0, vanished_after_s=10.0),
    resync_seconds=0.5, retry_seconds=0.2, webhook_port=None, webhook_insecure=True, bind_address="127.0.0.1",
    progress_status_seconds=0.0,  # every new step written at once: tests wait for status.step
)


def running_operator(c: Cluster, cfg: handlers.OperatorConfig = FAST, telemetry: Telemetry | None = None):
    """``shardwright operator --namespace <the test's>`` in this event loop, until the block ends."""
    memo = handlers.make_memo(cfg, api=c.client, request_json=telemetry or Telemetry())
    return kopf_in_loop(memo, clusterwide=False, namespaces=[c.namespace])


@contextlib.asynccontextmanager
async def kopf_in_loop(memo: kopf.Memo, **scope: Any):
    """Kopf with the operator's handlers in this event loop; yields ``memo`` once it is ready."""
    stop, ready = asyncio.Event(), asyncio.Event()
    task = asyncio.create_task(kopf.operator(
        registry=handlers.REGISTRY, memo=memo, standalone=True, stop_flag=stop, ready_flag=ready, **scope))
    await asyncio.wait_for(ready.wait(), 30)
    try:
        yield memo
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)


async def eventually(check: Callable[[], Any], timeout: float = 30.0, what: str = "") -> Any:
    """Poll ``check`` (in a thread: it may read the API) until it returns something truthy."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        try:
            if value := await asyncio.to_thread(check):
                return value
        except (KeyError, IndexError, AssertionError):
            pass
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what or check}")
        await asyncio.sleep(0.1)


def passes_done(memo: kopf.Memo) -> int:
    """Reconcile passes this operator has finished (its ``reconcile_seconds`` histogram)."""
    return int(memo.metrics.registry.get_sample_value("shardwright_operator_reconcile_seconds_count") or 0)


async def passes(memo: kopf.Memo, n: int, timeout: float = 30.0) -> None:
    """Return once the operator has finished ``n`` more reconcile passes: what a test waits
    for before saying that something did not happen. A finished job has no periodic passes:
    loops idle for a second are woken, as any event of theirs would."""
    loop = asyncio.get_running_loop()
    target, deadline = passes_done(memo) + n, loop.time() + timeout
    last, idle_since = passes_done(memo), loop.time()
    while (done := passes_done(memo)) < target:
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {n} more reconcile passes")
        if done != last:
            last, idle_since = done, loop.time()
        elif loop.time() - idle_since > 1.0:
            for wake in list(memo.wakeups.values()):
                wake.set()
            idle_since = loop.time()
        await asyncio.sleep(0.05)


async def never(check: Callable[[], Any], within: float, what: str) -> None:
    """Poll ``check`` for ``within`` seconds; fail as soon as it is truthy (no operator to count passes of)."""
    deadline = asyncio.get_running_loop().time() + within
    while asyncio.get_running_loop().time() < deadline:
        assert not await asyncio.to_thread(check), what
        await asyncio.sleep(0.1)
