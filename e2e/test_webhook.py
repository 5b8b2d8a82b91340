"""A webhook that never churns or locks users out (issue 17), with the chart installed as a
user installs it (two replicas, the certificate issued by the operators themselves):

- two ``helm upgrade``s leave the certificate Secret, the ``caBundle`` and the operator pods
  as they were (nothing regenerated, nothing restarted);
- an update that leaves the spec alone (labels, a finalizer) of a job today's rules refuse is
  admitted, a spec change of it is refused naming the field, and its delete goes through;
- with the leader killed, the standby replica (leading nothing) refuses a bad job naming
  the field, then takes the Lease over (the only other holder seen) and runs a job to the end.

The tests run in this order: the last one replaces an operator pod.
"""

from __future__ import annotations

import base64
import json
import time

import pytest
import yaml

from e2e.conftest import ROOT
from e2e.jobs import NS, OPERATOR_SA, SYSTEM, example, status, wait

pytestmark = pytest.mark.cluster
SECRET = f"{OPERATOR_SA}-webhook-cert"
LEASE = "shardwright-operator"
#: The label that lets a test put a job the webhook would refuse into the cluster.
UNCHECKED = "e2e.shardwright.io/unchecked"


def certificate(cluster) -> dict:
    """What must not change: the Secret's data and version, the caBundle."""
    secret = cluster.json("-n", SYSTEM, "get", "secret", SECRET)
    hook = cluster.json("get", "validatingwebhookconfiguration", OPERATOR_SA)["webhooks"][0]
    return {"data": secret.get("data"), "resourceVersion": secret["metadata"]["resourceVersion"],
            "caBundle": hook["clientConfig"].get("caBundle")}


def operators(cluster) -> dict[str, tuple[str, int, bool]]:
    """Operator pods: name -> (uid, restarts, ready)."""
    out = {}
    for pod in cluster.json("-n", SYSTEM, "get", "pods", "-l", "app.kubernetes.io/name=shardwright")["items"]:
        if pod["metadata"].get("deletionTimestamp"):
            continue
        statuses = pod.get("status", {}).get("containerStatuses") or [{}]
        out[pod["metadata"]["name"]] = (pod["metadata"]["uid"], statuses[0].get("restartCount", 0), bool(statuses[0].get("ready")))
    return out


def bad_job(name: str) -> dict:
    """A job the CRD's schema takes and the webhook refuses: two values compared."""
    doc = yaml.safe_load(example(name))
    doc["spec"]["suspend"] = True
    doc["spec"]["workers"][0]["resources"] = {"requests": {"cpu": 2}, "limits": {"cpu": "1500m"}}
    return doc


def refusal(cluster, doc: dict) -> str:
    out = cluster.kubectl("-n", NS, "create", "-f", "-", input=json.dumps(doc), check=False)
    assert out.returncode != 0, f"{doc['metadata']['name']} was admitted"
    return out.stderr


MESSAGE = "spec.workers[0].resources.requests.cpu: must be <= limits.cpu (1500m)"


def bad_pool(name: str) -> dict:
    """A pool the CRD's schema takes and the webhook refuses: kvHeads against heads."""
    doc = yaml.safe_load((ROOT / "examples" / "tiny-serve.yaml").read_text())
    doc["metadata"]["name"] = name
    doc["spec"]["model"].update(dim=64, heads=4, kvHeads=3)
    return doc


def test_upgrades_change_neither_the_certificate_nor_the_operators(cluster, installed):
    wait(lambda: len(operators(cluster)) == 2 and all(r for _, _, r in operators(cluster).values()), 180, "two ready operator replicas")
    before, pods = certificate(cluster), operators(cluster)
    assert set(before["data"]) == {"ca.crt", "ca.key", "tls.crt", "tls.key"}, "the operators issued no certificate"
    assert before["caBundle"] == before["data"]["ca.crt"], "the caBundle is not the issued CA"
    for _ in range(2):
        cluster.run("helm", "upgrade", "sw", str(ROOT / "helm" / "shardwright"), "-n", SYSTEM, "--reuse-values", "--wait", "--timeout=3m")
        assert certificate(cluster) == before
    time.sleep(5)  # a rollout or restart the upgrades started would show by now
    assert operators(cluster) == pods
    assert MESSAGE in refusal(cluster, bad_job("after-upgrades"))
    assert "spec.model.kvHeads: must divide heads (4); got 3" in refusal(cluster, bad_pool("after-upgrades"))


def test_an_update_leaving_the_spec_alone_is_admitted_and_a_delete_too(cluster, installed):
    """A job today's rules refuse (made with the webhook told to skip it, as one written
    before a rule would be) still takes label and finalizer changes and its delete."""
    hook = cluster.json("get", "validatingwebhookconfiguration", OPERATOR_SA)["webhooks"][0]
    skip = [{"op": "add", "path": "/webhooks/0/objectSelector",
             "value": {"matchExpressions": [{"key": UNCHECKED, "operator": "DoesNotExist"}]}}]
    cluster.kubectl("patch", "validatingwebhookconfiguration", OPERATOR_SA, "--type=json", "-p", json.dumps(skip))
    try:
        doc = bad_job("written-before")
        doc["metadata"]["labels"] = {UNCHECKED: "true"}
        wait(lambda: cluster.kubectl("-n", NS, "create", "-f", "-", input=json.dumps(doc), check=False).returncode == 0,
             30, "the job created past the webhook")
    finally:
        cluster.kubectl("patch", "validatingwebhookconfiguration", OPERATOR_SA, "--type=json",
                        "-p", json.dumps([{"op": "replace", "path": "/webhooks/0/objectSelector", "value": hook.get("objectSelector", {})}]))
    # Each update below is judged whichever selector the API server has loaded by then: the
    # new object lacks the label, and the restored selector takes every object.
    tj = ("-n", NS, "tj", "written-before")
    cluster.kubectl("label", *tj, f"{UNCHECKED}-", "team=a")
    cluster.kubectl("patch", *tj, "--type=merge", "-p", json.dumps({"metadata": {"finalizers": ["e2e.shardwright.io/hold"]}}))
    cluster.kubectl("patch", *tj, "--type=merge", "-p", json.dumps({"metadata": {"finalizers": None}}))
    assert cluster.json("get", *tj)["metadata"]["labels"] == {"team": "a"}
    steps = [{"op": "replace", "path": "/spec/training/steps", "value": 7}]
    changed = cluster.kubectl("patch", *tj, "--type=json", "-p", json.dumps(steps), check=False)
    assert changed.returncode != 0 and MESSAGE in changed.stderr, changed.stderr
    cluster.kubectl("delete", *tj, "--timeout=60s")


def test_the_standby_refuses_a_bad_job_while_the_leader_is_killed(cluster, installed):
    wait(lambda: len(operators(cluster)) == 2 and all(r for _, _, r in operators(cluster).values()), 180, "two ready operator replicas")
    # Both serve the webhook before either leads: the Lease may still name a replica of an
    # earlier install (its release at uninstall is refused) until that record expires.
    leader = wait(lambda: (lambda holder: holder if holder in operators(cluster) else None)(
        cluster.json("-n", SYSTEM, "get", "lease", LEASE)["spec"].get("holderIdentity")), 60, "one of the two leading")
    (standby,) = set(operators(cluster)) - {leader}
    cluster.kubectl("-n", SYSTEM, "delete", "pod", leader, "--grace-period=0", "--force")
    killed = time.monotonic()
    message = wait(lambda: (lambda err: err if "denied the request" in err else None)(refusal(cluster, bad_job("while-leaderless"))),
                   60, "the webhook's answer with the leader gone")
    lease = cluster.json("-n", SYSTEM, "get", "lease", LEASE)["spec"]
    # Nobody took the Lease over yet (a killed leader releases nothing; it expires after
    # its duration): the answer came from a replica that does not lead.
    assert lease.get("holderIdentity") in (leader, None, ""), lease
    assert time.monotonic() - killed < lease["leaseDurationSeconds"], "answered only after the Lease could expire"
    assert MESSAGE in message and 'admission webhook "trainingjobs.shardwright.io" denied the request' in message
    assert operators(cluster)[standby][1] == 0, "the standby restarted"
    # Then the standby takes the Lease over, and only it: the holders seen are the killed
    # leader, then the standby (one transition), within the duration plus two retries.
    holders = [leader]
    while holders[-1] != standby and time.monotonic() - killed < lease["leaseDurationSeconds"] + 15:
        if (now := cluster.json("-n", SYSTEM, "get", "lease", LEASE)["spec"].get("holderIdentity")) != holders[-1]:
            holders.append(now)
        time.sleep(0.2)
    taken = cluster.json("-n", SYSTEM, "get", "lease", LEASE)["spec"]
    assert holders == [leader, standby], f"Lease holders after the kill: {holders}"
    assert taken["leaseTransitions"] == lease.get("leaseTransitions", 0) + 1
    assert time.monotonic() - killed < lease["leaseDurationSeconds"] + 15
    # The new leader reconciles: a job applied now trains to the end.
    cluster.kubectl("-n", NS, "apply", "-f", "-", input=example("after-takeover"))
    wait(lambda: status(cluster, "after-takeover").get("phase") == "Complete", 240, "a job completed under the new leader")
    cluster.kubectl("-n", NS, "delete", "tj", "after-takeover", "--timeout=60s")
    # The replacement issues nothing new: it reads the certificate the Secret holds.
    before = certificate(cluster)
    wait(lambda: len(operators(cluster)) == 2 and all(r for _, _, r in operators(cluster).values()), 180, "the replacement ready")
    assert certificate(cluster) == before
    assert base64.b64decode(before["caBundle"]).startswith(b"-----BEGIN CERTIFICATE-----")
