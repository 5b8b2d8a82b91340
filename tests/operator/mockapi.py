"""KMock, a mock API server, for the faults a real one cannot be made to show on cue: an
answer of 500 or 409 to chosen requests (test_api_faults.py). Every other operator test runs
on the local control plane (kubeapi.py).

KMock quirks handled here, never in product code (see /work/shared/ENVIRONMENT.md):
resources and verbs are declared; objects get no uid or resourceVersion; ``generateName``
is ignored (events are read from the requests); a reaction's error answer still stores the
object.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from shardwright.operator import handlers

from .kubeapi import FAST, PODS, TJ, Telemetry, kopf_in_loop, tiny_job as cluster_job

NS = "default"


def tiny_job(name: str = "tiny") -> dict[str, Any]:
    doc = cluster_job(name)
    # KMock assigns neither uid nor resourceVersion; Kopf's finalizer patch tests the latter.
    doc["metadata"] = {"name": name, "namespace": NS, "uid": f"uid-{name}", "generation": 1, "resourceVersion": "1"}
    return doc


@pytest.fixture()
def kmock_cluster(kmock, tmp_path, monkeypatch):
    """KMock as a small API server, and a kubeconfig pointing at it (Kopf and our client)."""
    monkeypatch.setenv("KUBECONFIG", str(declare(kmock, tmp_path)))
    return kmock


def declare(kmock, tmp_path: Path) -> Path:
    """Declare the resources the operator uses; write a kubeconfig for KMock; return its path."""
    verbs = {"get", "list", "watch", "create", "update", "patch", "delete"}
    kmock.resources[TJ] = kmock.ResourceInfo(kind="TrainingJob", namespaced=True, shortnames={"tj"}, subresources={"status"}, verbs=verbs)
    kmock.resources[PODS] = kmock.ResourceInfo(kind="Pod", namespaced=True, verbs=verbs, subresources={"status"})
    for resource, kind, namespaced in [
        ("v1/services", "Service", True), ("v1/nodes", "Node", False), ("v1/events", "Event", True),
        # Kopf waits for these two to appear in discovery before it watches anything.
        ("v1/namespaces", "Namespace", False), ("apiextensions.k8s.io/v1/customresourcedefinitions", "CustomResourceDefinition", False),
        ("coordination.k8s.io/v1/leases", "Lease", True),
    ]:
        kmock.resources[resource] = kmock.ResourceInfo(kind=kind, namespaced=namespaced, verbs=verbs)
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "kmock",
        "clusters": [{"name": "kmock", "cluster": {"server": str(kmock.url).rstrip("/")}}],
        "users": [{"name": "kmock", "user": {"token": "test"}}],
        "contexts": [{"name": "kmock", "context": {"cluster": "kmock", "user": "kmock", "namespace": NS}}],
    }))
    return kubeconfig


def running_operator(cfg: handlers.OperatorConfig = FAST):
    """``shardwright operator`` (the whole cluster) in this event loop, until the block ends."""
    return kopf_in_loop(handlers.make_memo(cfg, request_json=Telemetry()), clusterwide=True)


def live(kmock, resource: str) -> dict[str, dict[str, Any]]:
    """Objects of ``resource`` that exist now, by name."""
    out = {}
    for (res, _ns, name), obj in kmock.objects.items():
        group_version, plural = resource.rsplit("/", 1)
        if getattr(res, "plural", None) == plural and f"{res.group}/{res.version}".lstrip("/") == group_version and not obj.deleted:
            out[name] = obj.raw
    return out


async def create_job(kmock, doc: dict[str, Any]) -> None:
    """POST through KMock's HTTP side, so watchers see it (direct edits emit no events)."""
    async with aiohttp.ClientSession() as session:
        url = f"{str(kmock.url).rstrip('/')}/apis/shardwright.io/v1alpha1/namespaces/{NS}/trainingjobs"
        async with session.post(url, json=doc) as response:
            response.raise_for_status()


def job_status(kmock, name: str = "tiny") -> dict[str, Any]:
    return kmock.objects[TJ, NS, name].raw.get("status") or {}


def posted_events(kmock, reason: str) -> list[str]:
    """Messages of the events the operator posted with ``reason``. KMock ignores
    ``generateName``, so every event after the first is a 409: read the requests instead."""
    return [r.data.get("message", "") for r in list(kmock)
            if r.method == "POST" and r.url.path.endswith("/events") and isinstance(r.data, dict) and r.data.get("reason") == reason]


def requests(kmock, method: str, suffix: str) -> list:
    return [r for r in list(kmock) if r.method == method and r.url.path.endswith(suffix)]
