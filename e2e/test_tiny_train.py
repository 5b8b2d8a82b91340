"""The operator end to end on a cluster: installed by its chart, under its ServiceAccount,
training examples/tiny-train.yaml in worker pods, recovering from a deleted pod, admitting
through its webhook, and leaving nothing behind when the job is deleted.

By default on the local control plane with process-backed nodes (e2e/cluster; the pods run
this project's installed code, see docs/testing.md); on any cluster with
``SHARDWRIGHT_E2E_KUBECONFIG`` (e2e/conftest.py).
"""

from __future__ import annotations

import re

import pytest
import yaml

from e2e.conftest import ROOT
from e2e.jobs import NS, example, status, wait

pytestmark = pytest.mark.cluster
def test_a_bad_manifest_is_rejected_by_the_webhook_naming_the_field(cluster, installed):
    doc = yaml.safe_load((ROOT / "examples" / "tiny-train.yaml").read_text())
    doc["metadata"]["name"] = "bad-batch"
    doc["spec"]["data"]["microBatch"] = 32  # the schema allows it; only the webhook knows it exceeds globalBatch
    out = cluster.kubectl("-n", NS, "apply", "-f", "-", input=yaml.safe_dump(doc), check=False)
    assert out.returncode != 0
    assert 'admission webhook "trainingjobs.shardwright.io" denied the request' in out.stderr
    assert "spec.data.microBatch: must be <= globalBatch (16); got 32" in out.stderr


def test_tiny_train_completes_with_a_falling_loss_and_its_children_are_collected(cluster, installed):
    cluster.kubectl("-n", NS, "apply", "-f", str(ROOT / "examples" / "tiny-train.yaml"))
    final = wait(lambda: (s := status(cluster)).get("phase") in ("Complete", "Failed") and s, 600, "a terminal phase")
    assert final["phase"] == "Complete" and final["step"] == 120 and final["restarts"] == 0, final
    # Ranks really trained: the loss fell as it does locally (about 4.2 at step 1, 1.4 at 120).
    assert final["loss"] < 2.5 and final["lastCheckpoint"]["step"] == 120
    header = cluster.kubectl("-n", NS, "get", "tj").stdout.splitlines()[0].split()
    assert header == ["NAME", "PHASE", "READY", "WORLD", "STEP", "RESTARTS", "AGE"]
    assert cluster.json("-n", NS, "get", "pods,services", "-l", "shardwright.io/job=tiny-train")["items"]

    cluster.kubectl("-n", NS, "delete", "tj", "tiny-train", "--timeout=60s")
    wait(lambda: not cluster.json("-n", NS, "get", "pods,services", "-l", "shardwright.io/job=tiny-train")["items"],
         120, "pods and Service garbage-collected")


def test_a_deleted_worker_pod_gives_generation_two_resumed_from_the_checkpoint(cluster, installed):
    cluster.kubectl("-n", NS, "apply", "-f", "-", input=example("recover", steps=1500))
    first = wait(lambda: (s := status(cluster, "recover")).get("lastCheckpoint", {}).get("step") and s, 600, "a committed checkpoint")
    assert first["generation"] == 1 and first["phase"] == "Running"
    # As a node failure would: the pod is gone at once, its processes killed.
    cluster.kubectl("-n", NS, "delete", "pod", "recover-g1-worker-1", "--grace-period=0", "--force")
    resumed = wait(lambda: (s := status(cluster, "recover")).get("generation", 0) >= 2 and s, 300, "generation 2")
    final = wait(lambda: (s := status(cluster, "recover")).get("phase") in ("Complete", "Failed") and s, 900, "a terminal phase")
    assert final["phase"] == "Complete" and final["step"] == 1500 and final["restarts"] >= 1, final
    assert resumed["generation"] == 2
    events = cluster.json("-n", NS, "get", "events", "--field-selector=involvedObject.name=recover")["items"]
    restarted = [e["message"] for e in events if e["reason"] == "RestartedFromCheckpoint"]
    resumed_from = [int(m.group(1)) for m in map(re.compile(r"resumes from step (\d+)").search, restarted) if m]
    assert resumed_from and resumed_from[0] >= first["lastCheckpoint"]["step"], restarted  # not from scratch
