"""Checkpoint storage a job names, end to end. On S3: the chart's operator trains a job whose
``spec.checkpoint`` names ``s3://`` on a real S3-compatible server (tests/support/s3.py),
keys from a Secret; a rank pod is force-deleted and generation 2, on another node, resumes
from the bucket. On a volume: a job's own PersistentVolumeClaim instead of the chart's.

The server runs on this machine at a process node's InternalIP (the ``s3`` fixture of
e2e/conftest.py).
"""

from __future__ import annotations

import json
import re

import pytest
import yaml

from e2e.jobs import NS, example, status, wait
from tests.support.s3 import KEYS, REGION

pytestmark = pytest.mark.cluster
JOB = "s3-resume"
STEPS = 1500
INTERVAL = 100


def _pods(cluster, generation: int) -> list[dict]:
    return cluster.json("-n", NS, "get", "pods", "-l", f"shardwright.io/job={JOB},shardwright.io/generation={generation}")["items"]


def _manifests(s3, fs, prefix: str) -> list[dict]:
    """Every committed manifest in the bucket under ``prefix``, oldest first."""
    keys = [k for k in s3.keys(prefix) if k.endswith("/manifest.json")]
    return sorted((json.loads(fs.cat_file(f"{s3.bucket}/{k}")) for k in keys), key=lambda m: m["step"])


def test_s3_resume_on_another_node(cluster, installed, s3):
    import s3fs

    fs = s3fs.S3FileSystem(key=KEYS["AWS_ACCESS_KEY_ID"], secret=KEYS["AWS_SECRET_ACCESS_KEY"], endpoint_url=s3.endpoint,
                           client_kwargs={"region_name": REGION}, skip_instance_cache=True, use_listings_cache=False)
    cluster.kubectl("-n", NS, "create", "secret", "generic", "s3-keys", *(f"--from-literal={k}={v}" for k, v in KEYS.items()),
                    f"--from-literal=AWS_DEFAULT_REGION={REGION}")
    doc = yaml.safe_load(example(JOB, steps=STEPS))
    # keep covers every checkpoint: the bucket keeps the whole story to check afterwards.
    doc["spec"]["checkpoint"] = {"uri": s3.uri(JOB), "credentialsSecret": "s3-keys", "endpoint": s3.endpoint,
                                 "intervalSteps": INTERVAL, "keep": STEPS // INTERVAL}
    cordoned = None
    try:
        cluster.kubectl("-n", NS, "apply", "-f", "-", input=yaml.safe_dump(doc))
        first = wait(lambda: _manifests(s3, fs, f"{JOB}/"), 600, "a checkpoint committed in the bucket")
        assert first[0]["generation"] == 1 and status(cluster, JOB).get("generation") == 1
        before = {p["metadata"]["name"]: p["spec"]["nodeName"] for p in _pods(cluster, 1)}
        killed = f"{JOB}-g1-worker-1"
        # Its node is cordoned, so generation 2 cannot come back where it was (process nodes
        # place freely otherwise); then the pod is gone at once, as on a node failure.
        cordoned = before[killed]
        cluster.kubectl("cordon", cordoned)
        newest_before_kill = _manifests(s3, fs, f"{JOB}/")[-1]["step"]
        cluster.kubectl("-n", NS, "delete", "pod", killed, "--grace-period=0", "--force")

        wait(lambda: status(cluster, JOB).get("generation", 0) >= 2, 300, "generation 2")
        final = wait(lambda: (s := status(cluster, JOB)).get("phase") in ("Complete", "Failed") and s, 1200, "a terminal phase")
        assert final["phase"] == "Complete" and final["step"] == STEPS and final["restarts"] >= 1, final
        assert final["lastCheckpoint"]["uri"] == f"{s3.uri(JOB)}/step-{STEPS:08d}", final["lastCheckpoint"]

        after = {p["metadata"]["name"]: p["spec"]["nodeName"] for p in _pods(cluster, 2)}
        assert after and cordoned not in after.values(), (before, after)  # the killed rank runs elsewhere now

        # Resumed from the bucket, not from scratch: every generation-2 checkpoint is past the
        # newest one generation 1 committed before the kill, and the controller says where from.
        manifests = _manifests(s3, fs, f"{JOB}/")
        second = [m for m in manifests if m["generation"] == 2]
        assert second and min(m["step"] for m in second) > newest_before_kill, [(m["step"], m["generation"]) for m in manifests]
        assert manifests[-1]["step"] == STEPS and manifests[-1]["generation"] == 2
        assert {m["owner"] for m in manifests} == {cluster.json("-n", NS, "get", "tj", JOB)["metadata"]["uid"]}
        events = cluster.json("-n", NS, "get", "events", f"--field-selector=involvedObject.name={JOB}")["items"]
        resumed = [int(m.group(1)) for e in events if e["reason"] == "RestartedFromCheckpoint"
                   and (m := re.search(r"resumes from step (\d+)", e["message"]))]
        assert resumed and resumed[0] >= newest_before_kill, events

        # The keys reached the ranks by reference only: no pod spec holds a secret value.
        for pod in _pods(cluster, 2):
            container = pod["spec"]["containers"][0]
            assert container["envFrom"] == [{"secretRef": {"name": "s3-keys"}}]
            assert KEYS["AWS_SECRET_ACCESS_KEY"] not in json.dumps(pod) and KEYS["AWS_ACCESS_KEY_ID"] not in json.dumps(pod)
    finally:
        if cordoned:
            cluster.kubectl("uncordon", cordoned, check=False)
        cluster.kubectl("-n", NS, "delete", "tj", JOB, "--timeout=120s", check=False)
        cluster.kubectl("-n", NS, "delete", "secret", "s3-keys", check=False)


def test_a_jobs_own_volume_claim_holds_its_checkpoints(cluster, installed, tmp_path):
    if cluster.storage is None:
        pytest.skip("needs process-backed nodes: the volume is a hostPath on this machine")
    job, claim, folder = "own-claim", "own-claim-ckpt", tmp_path / "own-volume"
    folder.mkdir()
    cluster.kubectl("apply", "-f", "-", input=json.dumps({
        "apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": f"{NS}-{claim}"},
        "spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteMany"], "storageClassName": "",
                 "hostPath": {"path": str(folder)}, "claimRef": {"namespace": NS, "name": claim}}}))
    cluster.kubectl("-n", NS, "apply", "-f", "-", input=json.dumps({
        "apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": claim, "namespace": NS},
        "spec": {"accessModes": ["ReadWriteMany"], "storageClassName": "", "resources": {"requests": {"storage": "1Gi"}}}}))
    doc = yaml.safe_load(example(job))
    doc["spec"]["checkpoint"] = {"volumeClaim": claim, "intervalSteps": 40, "keep": 2}
    try:
        cluster.kubectl("-n", NS, "apply", "-f", "-", input=yaml.safe_dump(doc))
        final = wait(lambda: (s := status(cluster, job)).get("phase") in ("Complete", "Failed") and s, 600, "a terminal phase")
        assert final["phase"] == "Complete" and final["lastCheckpoint"]["step"] == 120, final
        pods = cluster.json("-n", NS, "get", "pods", "-l", f"shardwright.io/job={job}")["items"]
        assert pods and all(p["spec"]["volumes"][0]["persistentVolumeClaim"]["claimName"] == claim for p in pods)
        # On the job's volume at the default <namespace>/<name> folder; none on the chart's.
        written = sorted(p.name for p in (folder / NS / job).iterdir())
        assert written == ["step-00000080", "step-00000120"], written
        assert json.loads((folder / NS / job / "step-00000120" / "manifest.json").read_text())["step"] == 120
        assert not (cluster.storage / NS / job).exists()
    finally:
        cluster.kubectl("-n", NS, "delete", "tj", job, "--timeout=120s", check=False)
        cluster.kubectl("-n", NS, "delete", "pvc", claim, "--wait=false", check=False)
        cluster.kubectl("delete", "pv", f"{NS}-{claim}", "--wait=false", check=False)
