"""End to end on a real cluster (kind or k3d). One command, from the repository root:

    kind create cluster && docker build -t shardwright:dev . && kind load docker-image shardwright:dev \\
      && KUBECONFIG=~/.kube/config .venv/bin/python -m pytest e2e -q

Installs the chart, applies examples/tiny-train.yaml, waits for Complete; then applies it
again, deletes a worker pod mid-run and waits for generation 2 and Complete.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(not os.environ.get("KUBECONFIG"), reason="KUBECONFIG is unset: no cluster to run against")
ROOT = Path(__file__).resolve().parents[1]
NS = "shardwright-e2e"


def sh(*args: str) -> str:
    return subprocess.run(args, check=True, capture_output=True, text=True).stdout


def status(name: str) -> dict:
    return json.loads(sh("kubectl", "-n", NS, "get", "tj", name, "-o", "json")).get("status") or {}


def wait(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := predicate():
            return value
        time.sleep(2)
    raise AssertionError(f"timed out: {what}")


@pytest.fixture(scope="module")
def installed():
    sh("kubectl", "create", "namespace", NS)
    sh("helm", "install", "sw", str(ROOT / "helm" / "shardwright"), "-n", NS, "--wait",
       "--set", "image.repository=shardwright", "--set", "image.tag=dev")
    yield
    sh("helm", "uninstall", "sw", "-n", NS)
    sh("kubectl", "delete", "namespace", NS, "--wait=false")


def test_tiny_train_completes_and_recovers_from_a_killed_pod(installed):
    sh("kubectl", "-n", NS, "apply", "-f", str(ROOT / "examples" / "tiny-train.yaml"))
    wait(lambda: status("tiny-train").get("phase") == "Running", 300, "Running")
    sh("kubectl", "-n", NS, "delete", "pod", "tiny-train-g1-worker-1", "--grace-period=0", "--force")
    wait(lambda: status("tiny-train").get("generation", 0) >= 2, 300, "generation 2")
    final = wait(lambda: status("tiny-train").get("phase") in ("Complete", "Failed") and status("tiny-train"), 900, "terminal")
    assert final["phase"] == "Complete" and final["restarts"] >= 1
