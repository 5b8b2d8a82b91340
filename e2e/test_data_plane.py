"""The data plane shut to all but the job and the operator (issue 17): with the chart's
``networkPolicy.enabled``, a running job's rank 0 answers the operator (its status advances
through the job's NetworkPolicy, with the job's token), while a pod of another namespace or
of another job cannot reach its telemetry port at all; a pod let through (one carrying the
job's label) gets 401 from ``/status`` without the token, and ``/healthz`` only.

Probe pods run a few HTTP requests and leave the outcomes in their termination message. The
process-backed nodes enforce ingress NetworkPolicy (e2e/cluster/netpolicy.py); on another
cluster, its CNI must, for this test to mean anything.
"""

from __future__ import annotations

import json

import pytest
import yaml

from e2e.conftest import ROOT
from e2e.jobs import NS, SYSTEM, example, status, wait

pytestmark = pytest.mark.cluster
JOB = "guarded"
OUTSIDE = "e2e-outside"
TELEMETRY_PORT = 9400
#: Each request of a probe pod: its name, URL and token (None: no Authorization header).
#: Answers are the HTTP status, or the error's name where nothing answered (dropped: a timeout).
PROBE = """
import json, sys, urllib.error, urllib.request
out = {}
for name, url, token in json.loads(sys.argv[1]):
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            out[name] = response.status
    except urllib.error.HTTPError as e:
        out[name] = e.code
    except OSError as e:
        out[name] = type(getattr(e, "reason", e)).__name__
open("/dev/termination-log", "w").write(json.dumps(out))
"""


def probe(cluster, namespace: str, name: str, labels: dict[str, str], requests: list[tuple[str, str, str | None]]) -> dict:
    """Run a probe pod in ``namespace`` with ``labels``; what each request got."""
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": namespace, "labels": labels},
           "spec": {"restartPolicy": "Never", "automountServiceAccountToken": False,
                    "containers": [{"name": "probe", "image": cluster.image, "command": ["python", "-c", PROBE, json.dumps(requests)]}]}}
    cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump(pod))
    done = wait(lambda: (p := cluster.json("-n", namespace, "get", "pod", name)["status"]).get("phase") in ("Succeeded", "Failed") and p,
                120, f"probe pod {name} done")
    assert done["phase"] == "Succeeded", done
    return json.loads(done["containerStatuses"][0]["state"]["terminated"]["message"])


def test_only_the_job_and_the_operator_reach_a_rank_and_only_the_token_reads_it(cluster, installed):
    cluster.run("helm", "upgrade", "sw", str(ROOT / "helm" / "shardwright"), "-n", SYSTEM, "--reuse-values",
                "--set", "networkPolicy.enabled=true", "--wait", "--timeout=3m")
    assert cluster.json("-n", SYSTEM, "get", "networkpolicy", "sw-shardwright")["spec"]["policyTypes"] == ["Ingress"]
    wait(lambda: cluster.kubectl("-n", NS, "apply", "--dry-run=server", "-f", str(ROOT / "examples" / "tiny-train.yaml"),
                                 check=False).returncode == 0, 120, "webhook serving after the upgrade")
    cluster.kubectl("-n", NS, "apply", "-f", "-", input=example(JOB, steps=100000))
    policy = wait(lambda: cluster.kubectl("-n", NS, "get", "networkpolicy", f"{JOB}-ranks", check=False).returncode == 0
                  and cluster.json("-n", NS, "get", "networkpolicy", f"{JOB}-ranks"), 120, "the job's NetworkPolicy")
    assert policy["metadata"]["ownerReferences"][0]["name"] == JOB
    # The operator reads rank 0 through the policy, with the token: the status advances.
    wait(lambda: status(cluster, JOB).get("step", 0) > 0, 300, "status.step from rank 0's /status")

    rank0 = cluster.json("-n", NS, "get", "pod", f"{JOB}-g1-worker-0")["status"]["podIP"]
    base = f"http://{rank0}:{TELEMETRY_PORT}"
    cluster.kubectl("create", "namespace", OUTSIDE)
    try:
        outsider = probe(cluster, OUTSIDE, "outsider", {"app": "curious"}, [("healthz", f"{base}/healthz", None)])
        other_job = probe(cluster, NS, "other-job", {"shardwright.io/job": "other"}, [("healthz", f"{base}/healthz", None)])
        # A pod the policy lets in (it carries the job's label): the token is what guards /status.
        inside = probe(cluster, NS, "inside", {"shardwright.io/job": JOB}, [
            ("healthz", f"{base}/healthz", None), ("status", f"{base}/status", None),
            ("wrong-token", f"{base}/status", "not-the-token"), ("control", f"{base}/control", None),
        ])
    finally:
        cluster.kubectl("delete", "namespace", OUTSIDE, "--wait=false", check=False)
        cluster.kubectl("-n", NS, "delete", "pod", "other-job", "inside", "--wait=false", check=False)
    assert outsider == {"healthz": "TimeoutError"} and other_job == {"healthz": "TimeoutError"}, (outsider, other_job)
    assert inside == {"healthz": 200, "status": 401, "wrong-token": 401, "control": 401}, inside
    assert status(cluster, JOB)["phase"] == "Running"  # the probes changed nothing
    cluster.kubectl("-n", NS, "delete", "tj", JOB, "--wait=false")
