"""A job whose pods a NetworkPolicy shuts to all but each other (issue 16): the ranks still
rendezvous and train, the operator's probes of rank 0's telemetry port are dropped, and a
rank 0 killed after a committed checkpoint gives a generation 2 that resumes from the
checkpoints in storage, not from step 0.

The operator runs in its pod (the chart's Deployment) and probes from that pod's IP, which
the policy does not admit; the process-backed nodes enforce it (e2e/cluster/netpolicy.py).
On another cluster, its CNI must enforce NetworkPolicy for this test to mean anything.
"""

from __future__ import annotations

import time

import pytest
import yaml

from e2e.jobs import NS, SYSTEM, example, status, wait
from shardwright.workers.manifest import committed

pytestmark = pytest.mark.cluster
JOB = "fenced"
LABEL = "shardwright.io/job"
#: Seconds the operator's status is watched for a probe's answer: two resyncs and more.
PROBE_PASSES_S = 25
#: Long enough that the job still trains after the probe window on a quiet machine (1,500
#: steps finished in 27 s at 2026-12-07's speed, before the window ended).
STEPS = 6000


def only_its_own_pods(job: str) -> dict:
    """Ingress to the job's pods from the job's pods alone: rendezvous and all-reduce pass."""
    pods = {"matchLabels": {LABEL: job}}
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": {"name": f"{job}-only", "namespace": NS},
            "spec": {"podSelector": pods, "policyTypes": ["Ingress"], "ingress": [{"from": [{"podSelector": pods}]}]}}


def test_rank0_killed_under_a_policy_blocking_the_probes_resumes_from_storage(cluster, installed):
    if cluster.storage is None:
        pytest.fail("needs the local process-backed nodes: the test reads the checkpoints from their hostPath volume")
    # The operator probes from its pod's address (not the node's, which no policy can shut out).
    operators = [p["status"] for p in cluster.json("-n", SYSTEM, "get", "pods")["items"]]
    assert operators and all(s["podIP"] != s["hostIP"] for s in operators), operators
    cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump(only_its_own_pods(JOB)))
    doc = yaml.safe_load(example(JOB, steps=STEPS))
    doc["spec"]["checkpoint"]["keep"] = STEPS  # every checkpoint stays, so each generation's can be read at the end
    cluster.kubectl("-n", NS, "apply", "-f", "-", input=yaml.safe_dump(doc))
    storage = cluster.storage / NS / JOB

    # Training goes on behind the policy: checkpoints commit in storage while the operator,
    # probing rank 0 at every pass (one per resync, 10 s), learns nothing of them.
    first = wait(lambda: committed(storage), 600, "a committed checkpoint in storage")[-1]["step"]
    until = time.monotonic() + PROBE_PASSES_S
    while time.monotonic() < until:
        seen = status(cluster, JOB)
        assert not seen.get("step") and not seen.get("lastCheckpoint"), f"the operator reached rank 0 through the policy: {seen}"
        time.sleep(1)
    assert seen["generation"] == 1 and seen["phase"] == "Running", seen
    before_kill = committed(storage)[-1]["step"]
    assert before_kill > first  # the ranks still reach each other

    # As a node failure would: rank 0's pod gone at once, its processes killed.
    cluster.kubectl("-n", NS, "delete", "pod", f"{JOB}-g1-worker-0", "--grace-period=0", "--force")
    final = wait(lambda: (s := status(cluster, JOB)).get("phase") in ("Complete", "Failed") and s, 900, "a terminal phase")
    assert final["phase"] == "Complete" and final["generation"] == 2 and final["step"] == STEPS, final

    manifests = committed(storage)
    killed_at = max(m["step"] for m in manifests if m["generation"] == 1)  # rank 0 commits: none after its death
    second = sorted(m["step"] for m in manifests if m["generation"] == 2)
    assert killed_at >= before_kill
    # Generation 2 loaded step ``killed_at`` from storage: it never wrote an earlier step again.
    assert second and second[0] == killed_at + 40 and second[-1] == STEPS, (killed_at, second)
    cluster.kubectl("-n", NS, "delete", "tj", JOB, "--wait=false")
    cluster.kubectl("-n", NS, "delete", "networkpolicy", f"{JOB}-only")
