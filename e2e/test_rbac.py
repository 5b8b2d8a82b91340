"""RBAC exactly what the code calls (issue 17): a TrainingJob's whole life under the chart's
ServiceAccount, installed to watch the jobs' namespace only (what jobs need is granted in a
Role there; the other modules run cluster-wide under the ClusterRole, and every module's
install fails on any refused call) (create, a readmit request in the spec, a deleted pod and its restart, completion, deletion
after ``ttlSecondsAfterFinished``), read back from the API server's audit log: no call was
refused, and every permission the chart grants was used or is named below with the path
that needs it.

Local control plane only (the audit log is this machine's API server's).
"""

from __future__ import annotations

import yaml

from e2e.cluster import audit
from e2e.jobs import NS, OPERATOR_SA, SYSTEM, WORKER_SA, example, status, wait

import pytest

pytestmark = pytest.mark.cluster
CHART_SET = (f"watchNamespaces={{{NS}}}",)

#: Granted, and taken only on paths this life does not walk (they may be, under load).
RARE = {
    ("get", "/services"): "a 409 on creating the job's Service: whose is it (ownership by uid)",
    ("get", "policy/poddisruptionbudgets"): "a 409 on creating a generation's PodDisruptionBudget: whose is it",
    ("get", "/pods"): "a 409 on creating a pod: whose is it",
    ("create", "coordination.k8s.io/leases"): "the leader Lease, made once: it outlives helm uninstall, so a later install finds it",
    ("get", "shardwright.io/trainingjobs"): "a 409 on a status write: the job is read again",
    ("get", "shardwright.io/trainingjobs/status"): "kept beside patch for kubectl auth can-i and tools; unused",
    ("patch", "shardwright.io/trainingjobs"): "Kopf removes its finalizer from a job an older operator left it on",
    ("update", "shardwright.io/trainingjobs/finalizers"): "never called: the API server checks it at each create of an "
    "object whose ownerReference blocks the job's deletion (OwnerReferencesPermissionEnforcement, on here)",
}


def granted(cluster) -> set[tuple[str, str]]:
    """(verb, group/resource) the chart gives the operator: its ClusterRole, the jobs' Role
    in NS, the Lease Role, the webhook certificate Role and the token key Role."""
    roles = [cluster.json("get", "clusterrole", OPERATOR_SA), cluster.json("-n", NS, "get", "role", f"{OPERATOR_SA}-jobs"),
             *(cluster.json("-n", SYSTEM, "get", "role", f"{OPERATOR_SA}-{role}") for role in ("leader", "webhook", "token-key"))]
    return {(verb, f"{group}/{resource}") for role in roles for rule in role["rules"]
            for group in rule["apiGroups"] for resource in rule["resources"] for verb in rule["verbs"]}


def test_a_jobs_whole_life_uses_exactly_the_granted_permissions(cluster, installed):
    assert cluster.audit_log is not None, "needs the local control plane's audit log"
    since = audit.size(cluster.audit_log)
    doc = yaml.safe_load(example("rbac", steps=200))
    doc["spec"]["ttlSecondsAfterFinished"] = 5
    cluster.kubectl("-n", NS, "apply", "-f", "-", input=yaml.safe_dump(doc))
    wait(lambda: status(cluster, "rbac").get("phase") == "Running", 300, "Running")
    pod = cluster.json("-n", NS, "get", "pod", "rbac-g1-worker-0")["spec"]
    assert pod["serviceAccountName"] == WORKER_SA and pod["automountServiceAccountToken"] is False
    # A readmit of a node the job never avoided: told it is ignored, acknowledged in status.
    cluster.kubectl("-n", NS, "patch", "tj", "rbac", "--type=merge", "-p", '{"spec":{"readmit":{"nodes":["nowhere"]}}}')
    wait(lambda: status(cluster, "rbac").get("readmitted") == {"nodes": ["nowhere"], "token": ""}, 60, "the readmit acknowledged")
    cluster.kubectl("-n", NS, "delete", "pod", "rbac-g1-worker-1", "--grace-period=0", "--force")
    wait(lambda: status(cluster, "rbac").get("generation", 0) >= 2, 300, "generation 2")
    wait(lambda: cluster.kubectl("-n", NS, "get", "tj", "rbac", check=False).returncode != 0, 900, "the job deleted after its TTL")

    operator = audit.service_account(SYSTEM, OPERATOR_SA)
    during = audit.calls(cluster.audit_log, operator, since=since)
    assert during, f"no call of {operator} in the audit log"
    assert not [c for c in during if c.code == 403], sorted({c for c in during if c.code == 403})
    # Used: since this module's install, so the install's calls count too and an earlier
    # module's do not (another install may grant more: networkPolicy.enabled in test_data_plane).
    used = {(c.verb, c.resource) for c in audit.calls(cluster.audit_log, operator, since=installed) if c.code < 400}
    lists = {("list", r) for v, r in used if v == "watch"}  # a watch follows its list
    have = granted(cluster)
    assert used <= have, f"called without a grant: {sorted(used - have)}"
    assert set(RARE) <= have, f"RARE names what the chart does not grant: {sorted(set(RARE) - have)}"
    unused = have - used - lists - set(RARE)
    assert not unused, f"granted but never called (remove, or name the path in RARE): {sorted(unused)}"
