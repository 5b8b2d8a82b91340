"""Where the e2e scenarios run: the local cluster with process-backed nodes (default, CI),
or any cluster when ``SHARDWRIGHT_E2E_KUBECONFIG`` names its kubeconfig (kind, k3d, a real
one; then ``SHARDWRIGHT_E2E_IMAGE`` names an image of this project the cluster can pull)."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@dataclasses.dataclass(frozen=True)
class Cluster:
    """kubectl and helm against one cluster."""

    env: dict[str, str]
    image: str
    #: Local process-backed nodes: a folder for hostPath PersistentVolumes (None elsewhere).
    storage: Path | None
    #: The local API server's audit log (None elsewhere): the operator's calls, for RBAC.
    audit_log: Path | None = None

    def run(self, *args: str, input: str | None = None, timeout: float = 300, check: bool = True) -> subprocess.CompletedProcess:
        out = subprocess.run(args, env=self.env, input=input, capture_output=True, text=True, timeout=timeout)
        if check and out.returncode != 0:
            raise AssertionError(f"{' '.join(args)} exited {out.returncode}:\n{out.stderr[-2000:]}")
        return out

    def kubectl(self, *args: str, **kw) -> subprocess.CompletedProcess:
        return self.run("kubectl", *args, **kw)

    def json(self, *args: str):
        return json.loads(self.kubectl(*args, "-o", "json").stdout)


@pytest.fixture(scope="module")
def cluster(request, tmp_path_factory) -> Cluster:
    if kubeconfig := os.environ.get("SHARDWRIGHT_E2E_KUBECONFIG"):
        return Cluster({**os.environ, "KUBECONFIG": kubeconfig}, os.environ.get("SHARDWRIGHT_E2E_IMAGE", "shardwright:dev"), None)
    from e2e.cluster import session

    from tests.support.cluster import get_json, wait_for

    cp = request.getfixturevalue("control_plane")
    ours = set(request.getfixturevalue("process_nodes"))

    def others() -> list[str]:
        """Ready nodes other tests of this session may have left (no kubelet behind them)."""
        return [n["metadata"]["name"] for n in get_json(cp, "get", "nodes")["items"] if n["metadata"]["name"] not in ours
                and any(c["type"] == "Ready" and c["status"] == "True" for c in n.get("status", {}).get("conditions", []))]

    wait_for(lambda: not others(), 60, "the scenario's pods to have only process-backed nodes to go to")
    return Cluster(session.environ(cp), "shardwright:dev", tmp_path_factory.mktemp("volumes"), cp.audit_log)


@pytest.fixture(scope="module")
def installed(cluster: Cluster, request: pytest.FixtureRequest):
    """The chart in its namespace; a namespace for jobs with a shared checkpoint claim; a
    module's ``CHART_SET`` (``helm --set`` values) on top. Yields where the audit log stood
    before the install (this module's calls follow it)."""
    from e2e.cluster import audit
    from e2e.jobs import CLAIM, NS, OPERATOR_SA, SYSTEM, WORKER_SA, wait

    audit_from = audit.size(cluster.audit_log) if cluster.audit_log else 0
    # A module before this one may still be deleting the namespace (its pods stopping).
    wait(lambda: cluster.kubectl("get", "namespace", NS, check=False).returncode != 0, 300, f"namespace {NS} gone")
    cluster.kubectl("create", "namespace", NS)
    # A module's NAMESPACE_LABELS (Pod Security levels) on both namespaces before any pod.
    labels = [f"{k}={v}" for k, v in getattr(request.module, "NAMESPACE_LABELS", {}).items()]
    if labels:
        cluster.kubectl("create", "namespace", SYSTEM, check=False)  # may be there from an earlier module
        for ns in (NS, SYSTEM):
            cluster.kubectl("label", "--overwrite", "namespace", ns, *labels)
    cluster.kubectl("-n", NS, "create", "serviceaccount", WORKER_SA)
    if cluster.storage is not None:  # process-backed nodes: a hostPath volume all of them see
        cluster.kubectl("apply", "-f", "-", input=json.dumps({
            "apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": f"{NS}-checkpoints"},
            "spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteMany"], "storageClassName": "",
                     "hostPath": {"path": str(cluster.storage)}, "claimRef": {"namespace": NS, "name": CLAIM}}}))
    cluster.kubectl("apply", "-f", "-", input=json.dumps({
        "apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": CLAIM, "namespace": NS},
        "spec": {"accessModes": ["ReadWriteMany"], "storageClassName": "", "resources": {"requests": {"storage": "1Gi"}}}}))
    cluster.run("helm", "install", "sw", str(ROOT / "helm" / "shardwright"), "-n", SYSTEM, "--create-namespace",
                "--wait", "--timeout=3m", "--take-ownership", "--set", f"image.repository={cluster.image.rsplit(':', 1)[0]}",
                "--set", f"image.tag={cluster.image.rsplit(':', 1)[1]}", "--set", f"checkpoints.claim={CLAIM}",
                "--set", f"workerServiceAccount={WORKER_SA}",
                *(a for value in getattr(request.module, "CHART_SET", ()) for a in ("--set", value)))
    # The webhook answers once the operator leads: a valid object is admitted.
    wait(lambda: cluster.kubectl("-n", NS, "apply", "--dry-run=server", "-f", str(ROOT / "examples" / "tiny-train.yaml"),
                                 check=False).returncode == 0, 120, "webhook serving")
    yield audit_from
    # Up to the uninstall: helm removes the Role and the operator at once, so the operator's
    # last Lease release may be refused on the way out; nothing depends on it.
    audit_until = audit.size(cluster.audit_log) if cluster.audit_log else 0
    cluster.run("helm", "uninstall", "sw", "-n", SYSTEM, "--wait", "--timeout=2m", check=False)
    if labels:  # SYSTEM outlives the module
        cluster.kubectl("label", "namespace", SYSTEM, *(f"{label.split('=')[0]}-" for label in labels), check=False)
    # Gone before the next module installs again: its namespace, and the volume bound to the
    # claim that went with it (a static volume stays Released, and its path is this module's).
    cluster.kubectl("delete", "namespace", NS, "--timeout=300s", check=False, timeout=330)
    if cluster.storage is not None:
        cluster.kubectl("delete", "pv", f"{NS}-checkpoints", "--timeout=60s", check=False, timeout=90)
    if cluster.audit_log:  # every call the operator made under the chart's RBAC was allowed
        refused = [c for c in audit.calls(cluster.audit_log, audit.service_account(SYSTEM, OPERATOR_SA),
                                             since=audit_from, until=audit_until) if c.code == 403]
        assert not refused, f"the chart's RBAC refused the operator: {sorted(set(refused))}"


def node_ip(cluster: Cluster, node: str) -> str:
    addresses = cluster.json("get", "node", node)["status"]["addresses"]
    return next(a["address"] for a in addresses if a["type"] == "InternalIP")


@pytest.fixture()
def s3(cluster: Cluster, tmp_path):
    """The S3-compatible server (tests/support/s3.py) at a process node's InternalIP: the pod
    bridge's address on this machine, which the pods, from their own network namespaces,
    and the test both reach; nothing listens beyond this machine's bridge."""
    from tests.support.s3 import s3_server

    if cluster.storage is None:
        pytest.skip("needs process-backed nodes: pods of another cluster cannot reach a server on this machine")
    with s3_server(tmp_path / "s3", host=node_ip(cluster, "proc-0")) as server:
        yield server
