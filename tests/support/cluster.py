"""Fixtures of the tests that run on the local Kubernetes control plane (e2e/cluster).

The control plane starts once per session and is shared; each test gets its own namespace.
Nodes are added by the fixtures that need them (``process_nodes``, ``kwok_nodes``) and
removed after their module, so a test that plays the kubelet itself sees no node to which
the scheduler could bind its pods. When the control plane cannot be built or started the
tests fail with the reason: they never skip (KUBERNETES.md, docs/testing.md).
"""

from __future__ import annotations

import json
import secrets
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from e2e.cluster import session
from e2e.cluster.controlplane import ControlPlane


@pytest.fixture(scope="session")
def control_plane() -> Iterator[ControlPlane]:
    # Not under pytest's basetemp: a concurrent pytest run rotates those folders away.
    state = Path(tempfile.mkdtemp(prefix="shardwright-cluster-"))
    cp = session.control_plane(state)
    cp.start()
    yield cp
    cp.stop()
    shutil.rmtree(state, ignore_errors=True)


@pytest.fixture()
def kube(control_plane: ControlPlane, monkeypatch) -> ControlPlane:
    """The control plane, with ``KUBECONFIG`` pointing at it for this test."""
    monkeypatch.setenv("KUBECONFIG", str(control_plane.kubeconfig))
    return control_plane


@pytest.fixture()
def namespace(kube: ControlPlane) -> Iterator[str]:
    """A fresh namespace per test, deleted afterwards (without waiting)."""
    name = f"t-{secrets.token_hex(4)}"
    kube.kubectl("create", "namespace", name)
    _wait_for_default_serviceaccount(kube, name)
    yield name
    kube.kubectl("delete", "namespace", name, "--wait=false", check=False)


def _wait_for_default_serviceaccount(cp: ControlPlane, ns: str) -> None:
    """Pods are refused until the service-account controller made ``default`` (envtest's race)."""
    wait_for(lambda: cp.kubectl("-n", ns, "get", "serviceaccount", "default", check=False).returncode == 0,
             30, f"serviceaccount default in {ns}")


@pytest.fixture(scope="module")
def process_nodes(control_plane: ControlPlane) -> Iterator[list[str]]:
    """Process-backed GPU nodes (e2e/cluster/nodes/process.yaml) for this module's tests."""
    name = f"node-agent-{secrets.token_hex(3)}"
    session.start_node_agent(control_plane, name=name)
    nodes = [n["metadata"]["name"] for n in session.read_nodes(session.PROCESS_NODES)]
    yield nodes
    _remove_member(control_plane, name)
    control_plane.kubectl("delete", "node", *nodes, "--wait=false", check=False)


@pytest.fixture(scope="module")
def kwok_nodes(control_plane: ControlPlane) -> Iterator[list[str]]:
    """KWOK running and the nodes of examples/nodes/mixed.yaml registered as KWOK nodes."""
    session.start_kwok(control_plane)
    nodes = session.kwok_nodes(session.ROOT / "examples" / "nodes" / "mixed.yaml")
    for node in nodes:
        node["metadata"].pop("resourceVersion", None)
        status = node.pop("status", {})
        apply(control_plane, node)
        control_plane.kubectl("patch", "node", node["metadata"]["name"], "--subresource=status", "--type=merge",
                              "-p", json.dumps({"status": {"capacity": status.get("allocatable", {}), "allocatable": status.get("allocatable", {})}}))
    names = [n["metadata"]["name"] for n in nodes]
    yield names
    control_plane.kubectl("delete", "node", *names, "--wait=false", check=False)
    _remove_member(control_plane, "kwok")


def _remove_member(cp: ControlPlane, name: str) -> None:
    from e2e.cluster.controlplane import _end

    comp = cp.components.pop(name, None)
    if comp is not None:
        _end(comp.pid, comp.argv[0], comp.process)


def get_json(cp: ControlPlane, *args: str) -> Any:
    return json.loads(cp.kubectl(*args, "-o", "json").stdout)


def wait_for(check: Callable[[], Any], timeout: float, what: str, every: float = 0.25) -> Any:
    """Poll ``check`` until it returns something truthy; fail naming ``what``."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            if value := check():
                return value
        except (KeyError, IndexError, subprocess.CalledProcessError, json.JSONDecodeError) as e:
            last = e
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}" + (f" (last error: {last})" if last else ""))


def apply(cp: ControlPlane, doc: dict | str, *extra: str) -> subprocess.CompletedProcess:
    text = doc if isinstance(doc, str) else json.dumps(doc)
    return cp.kubectl("apply", "-f", "-", *extra, input=text)


__all__ = ["apply", "get_json", "wait_for", "Path"]
