"""The operator against KMock: real Kopf, real HTTP, real watch streams.

KMock quirks handled here, never in product code (see /work/shared/ENVIRONMENT.md):
resources and verbs are declared; there is no scheduler and no kubelet, so a test plays
the kubelet by patching pod status (:func:`set_pod_phase`); there is no garbage collector,
so deletion tests assert the ownerReferences the API server would cascade on; KMock merges
patches key by key (``null`` stays as a value).
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import kopf
import pytest
import yaml

from shardwright.operator import handlers
from shardwright.operator.backends.kubernetes import KubernetesSettings

TJ = "shardwright.io/v1alpha1/trainingjobs"
PODS = "v1/pods"
SERVICES = "v1/services"
NS = "default"
ROOT = Path(__file__).resolve().parents[2]


def tiny_job(name: str = "tiny", **spec: Any) -> dict[str, Any]:
    doc = yaml.safe_load((ROOT / "examples" / "tiny-train.yaml").read_text())
    # KMock assigns neither uid nor resourceVersion; Kopf's finalizer patch tests the latter.
    doc["metadata"] = {"name": name, "namespace": NS, "uid": f"uid-{name}", "generation": 1, "resourceVersion": "1"}
    doc["spec"].update(spec)
    return doc


@pytest.fixture()
def cluster(kmock, tmp_path, monkeypatch):
    """KMock as a small API server, and a kubeconfig pointing at it (Kopf and our client)."""
    monkeypatch.setenv("KUBECONFIG", str(declare(kmock, tmp_path)))
    return kmock


def declare(kmock, tmp_path: Path) -> Path:
    """Declare the resources the operator uses; write a kubeconfig for KMock; return its path."""
    kmock.resources[TJ] = kmock.ResourceInfo(
        kind="TrainingJob", namespaced=True, shortnames={"tj"}, subresources={"status"},
        verbs={"get", "list", "watch", "create", "update", "patch", "delete"},
    )
    verbs = {"get", "list", "watch", "create", "update", "patch", "delete"}
    kmock.resources[PODS] = kmock.ResourceInfo(kind="Pod", namespaced=True, verbs=verbs, subresources={"status"})
    kmock.resources[SERVICES] = kmock.ResourceInfo(kind="Service", namespaced=True, verbs=verbs)
    kmock.resources["v1/nodes"] = kmock.ResourceInfo(kind="Node", namespaced=False, verbs=verbs)
    kmock.resources["v1/events"] = kmock.ResourceInfo(kind="Event", namespaced=True, verbs=verbs)
    # Kopf waits for these two to appear in discovery before it watches anything.
    kmock.resources["v1/namespaces"] = kmock.ResourceInfo(kind="Namespace", namespaced=False, verbs=verbs)
    kmock.resources["apiextensions.k8s.io/v1/customresourcedefinitions"] = kmock.ResourceInfo(
        kind="CustomResourceDefinition", namespaced=False, verbs=verbs)
    kmock.resources["coordination.k8s.io/v1/leases"] = kmock.ResourceInfo(kind="Lease", namespaced=True, verbs=verbs)
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "kmock",
        "clusters": [{"name": "kmock", "cluster": {"server": str(kmock.url).rstrip("/")}}],
        "users": [{"name": "kmock", "user": {"token": "test"}}],
        "contexts": [{"name": "kmock", "context": {"cluster": "kmock", "user": "kmock", "namespace": NS}}],
    }))
    return kubeconfig


@dataclasses.dataclass
class Telemetry:
    """The ranks' telemetry as the tests play it: what rank 0's ``/status`` answers, per pod
    IP, and every POST the operator made (``/control``), as (url, payload)."""

    answers: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    posts: list[tuple[str, dict[str, Any]]] = dataclasses.field(default_factory=list)

    def __call__(self, url: str, payload: dict[str, Any] | None = None) -> dict[str, Any] | None:
        ip = url.split("//")[1].split(":")[0]
        if payload is not None:
            self.posts.append((url, copy.deepcopy(payload)))
            return {} if ip in self.answers else None
        return copy.deepcopy(self.answers.get(ip))


FAST = handlers.OperatorConfig(
    kubernetes=KubernetesSettings(startup_timeout_s=None, force_delete_after_s=1.0),
    resync_seconds=0.5, retry_seconds=0.2, webhook_port=None, webhook_insecure=True,
)


@contextlib.asynccontextmanager
async def running_operator(cfg: handlers.OperatorConfig = FAST, telemetry: Telemetry | None = None):
    """``shardwright operator`` in this event loop, until the block ends."""
    stop, ready = asyncio.Event(), asyncio.Event()
    memo = handlers.make_memo(cfg, request_json=telemetry or Telemetry())
    task = asyncio.create_task(kopf.operator(
        registry=handlers.REGISTRY, memo=memo, clusterwide=True, standalone=True,
        stop_flag=stop, ready_flag=ready,
    ))
    await asyncio.wait_for(ready.wait(), 10)
    try:
        yield memo
    finally:
        stop.set()
        await asyncio.wait_for(task, 20)


async def eventually(check: Callable[[], Any], timeout: float = 10.0, what: str = "") -> Any:
    """Poll ``check`` until it returns something truthy (no fixed sleeps in tests)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        try:
            if value := check():
                return value
        except (KeyError, AssertionError):
            pass
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what or check}")
        await asyncio.sleep(0.05)


def live(kmock, resource: str) -> dict[str, dict[str, Any]]:
    """Objects of ``resource`` that exist now, by name."""
    out = {}
    for (res, _ns, name), obj in kmock.objects.items():
        if str(res) == resource or _same(res, resource):
            if not obj.deleted:
                out[name] = obj.raw
    return out


def _same(res, text: str) -> bool:
    group_version, plural = text.rsplit("/", 1)
    return getattr(res, "plural", None) == plural and f"{res.group}/{res.version}".lstrip("/") == group_version


async def api(kmock, method: str, path: str, body: Any = None) -> dict[str, Any]:
    """One HTTP request to KMock, so watchers see the change (direct edits emit no events)."""
    headers = {"Content-Type": "application/merge-patch+json"} if method == "PATCH" else {}
    async with aiohttp.ClientSession() as session:
        async with session.request(method, str(kmock.url).rstrip("/") + path, json=body, headers=headers) as response:
            return await response.json(content_type=None)


def obj_path(resource: str, name: str | None = None) -> str:
    group_version, plural = resource.rsplit("/", 1)
    prefix = "/api/v1" if group_version == "v1" else f"/apis/{group_version}"
    return f"{prefix}/namespaces/{NS}/{plural}" + (f"/{name}" if name else "")


async def create_job(kmock, doc: dict[str, Any]) -> None:
    await api(kmock, "POST", obj_path(TJ), doc)


async def patch_job(kmock, name: str, patch: dict[str, Any]) -> None:
    await api(kmock, "PATCH", obj_path(TJ, name), patch)


async def set_pod_phase(kmock, name: str, phase: str, *, exit_code: int | None = None, reason: str | None = None,
                        ip: str | None = None, waiting: str | None = None) -> None:
    """Play the kubelet: give pod ``name`` a phase (and how its container ended)."""
    status: dict[str, Any] = {"phase": phase}
    if ip:
        status["podIP"] = ip
    container = {"name": "ranks", "image": "shardwright", "imageID": "", "ready": phase == "Running", "restartCount": 0}
    if exit_code is not None:
        status["containerStatuses"] = [container | {"state": {"terminated": {"exitCode": exit_code, "reason": reason or "Error"}}}]
    elif waiting:
        status["containerStatuses"] = [container | {"state": {"waiting": {"reason": waiting, "message": "back-off pulling image"}}}]
    await api(kmock, "PATCH", obj_path(PODS, name) + "/status", {"status": status})


async def bind_pod(kmock, name: str, node: str) -> None:
    """Play the scheduler: put pod ``name`` on ``node``."""
    await api(kmock, "PATCH", obj_path(PODS, name), {"spec": {"nodeName": node}})


async def run_all(kmock, generation: int, *, step: int | None = None, telemetry: Telemetry | None = None) -> list[str]:
    """Every pod of ``generation`` Running; rank 0 reports ``step`` and a checkpoint at it."""
    names = sorted(n for n, p in live(kmock, PODS).items() if p["metadata"]["labels"]["shardwright.io/generation"] == str(generation))
    for i, name in enumerate(names):
        await set_pod_phase(kmock, name, "Running", ip=f"10.0.{generation}.{i}")
    if telemetry is not None and step is not None:
        telemetry.answers[f"10.0.{generation}.0"] = {
            "generation": generation, "step": step, "loss": 1.5, "tokensPerSecond": 1000.0, "stepSeconds": [0.1, 0.1],
            "lastCheckpoint": {"step": step, "path": f"/checkpoints/default/tiny/step-{step:08d}", "worldSize": 2, "layout": "dp=2,sp=1"},
        }
    return names


def job_status(kmock, name: str = "tiny") -> dict[str, Any]:
    return (kmock.objects[TJ, NS, name].raw.get("status") or {})


def posted_events(kmock, reason: str) -> list[str]:
    """Messages of the events the operator posted with ``reason``. KMock ignores
    ``generateName``, so every event after the first is a 409: read the requests instead."""
    out = []
    for r in list(kmock):
        if r.method == "POST" and r.url.path.endswith("/events") and isinstance(r.data, dict) and r.data.get("reason") == reason:
            out.append(r.data.get("message", ""))
    return out
