"""A job's data plane on the local control plane: its token Secret (made once, owned by the
job, gone with it), the token its pods read by reference and the operator sends with every
probe, also after a restart, computed from its key and never read back from the Secret; its
NetworkPolicy when the operator is told to make one."""

from __future__ import annotations

import base64
import dataclasses
import json

import pytest

from shardwright.operator.backends import dataplane

from .kubeapi import (
    FAST, PODS, TJ, Telemetry, create_job, delete, eventually, get, job_status, live, passes, pods_of, run_all,
    running_operator, sent, set_pod_phase, tiny_job,
)

pytestmark = pytest.mark.cluster
SECRETS = "v1/secrets"
POLICIES = "networking.k8s.io/v1/networkpolicies"
OPERATOR = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "shardwright-system"}},
            "podSelector": {"matchLabels": {"app.kubernetes.io/name": "shardwright"}}}
FENCED = dataclasses.replace(FAST, kubernetes=dataclasses.replace(FAST.kubernetes, network_policy_peers=(OPERATOR,)))


def secret_creates(cluster) -> int:
    return len(sent(cluster, "POST", lambda p: p.endswith("/secrets")))


async def test_the_token_is_made_once_sent_with_every_probe_and_known_again_after_a_restart(cluster, monkeypatch):
    telemetry = Telemetry()
    async with running_operator(cluster, FENCED, telemetry=telemetry):
        job = await create_job(cluster, tiny_job(failurePolicy={"maxRestarts": 2, "backoff": {"initialSeconds": 0, "maxSeconds": 0}}))
        await eventually(lambda: len(pods_of(cluster, 1)) == 2, what="generation 1")
        name = f"tiny-telemetry-{job['metadata']['uid']}"
        secret = get(cluster, SECRETS, name)
        (owner,) = secret["metadata"]["ownerReferences"]
        assert owner["uid"] == job["metadata"]["uid"] and owner["controller"] is True and secret["immutable"] is True
        token = base64.b64decode(secret["data"]["token"]).decode()
        assert token == dataplane.token_for(FENCED.kubernetes.token_key, job["metadata"]["uid"])
        for pod in pods_of(cluster, 1).values():
            assert token not in json.dumps(pod)  # by reference only
            assert {"name": "SHARDWRIGHT_TELEMETRY_TOKEN", "valueFrom": {"secretKeyRef": {"name": name, "key": "token"}}} \
                in pod["spec"]["containers"][0]["env"]
        policy = get(cluster, POLICIES, "tiny-ranks")
        assert policy["metadata"]["ownerReferences"][0]["uid"] == job["metadata"]["uid"]
        assert policy["spec"]["ingress"][1] == {"from": [OPERATOR], "ports": [{"protocol": "TCP", "port": 9400}]}

        await run_all(cluster, 1, step=40, telemetry=telemetry)
        await eventually(lambda: job_status(cluster).get("step") == 40, what="step 40")
        assert telemetry.tokens and set(telemetry.tokens) == {token}  # every probe carried it
        assert token not in json.dumps(get(cluster, TJ, "tiny"))  # never in status

        await set_pod_phase(cluster, "tiny-g1-worker-1", "Failed", exit_code=1)
        await eventually(lambda: len(pods_of(cluster, 2)) == 2, what="generation 2")
        assert secret_creates(cluster) == 1  # made once: generation 2 uses the same

    # A new operator process with the same key (the chart keeps it in a Secret): it remembers
    # no job, computes the token again, and reads no Secret; the create answers 409, its own.
    monkeypatch.setattr(dataplane, "MADE", dataplane.Made())
    again = Telemetry(answers=telemetry.answers)
    reads_before = len(sent(cluster, "GET", lambda p: "/secrets" in p))
    async with running_operator(cluster, FENCED, telemetry=again) as memo:
        await run_all(cluster, 2, step=80, telemetry=again)
        await eventually(lambda: job_status(cluster).get("step") == 80, what="step 80 from generation 2")
        await passes(memo, 3)
        assert again.tokens and set(again.tokens) == {token}
        # Generation 3's start creates the Secret again: a 409, this job's by its name.
        await set_pod_phase(cluster, "tiny-g2-worker-1", "Failed", exit_code=1)
        await eventually(lambda: len(pods_of(cluster, 3)) == 2, what="generation 3")
        assert secret_creates(cluster) == 2 and get(cluster, SECRETS, name)["data"] == secret["data"]
        await run_all(cluster, 3, step=100, telemetry=again)
        await eventually(lambda: job_status(cluster).get("step") == 100, what="step 100 from generation 3")
        assert set(again.tokens) == {token}
        assert len(sent(cluster, "GET", lambda p: "/secrets" in p)) == reads_before

        await delete(cluster, TJ, "tiny")
        # The garbage collector follows the ownerReferences.
        await eventually(lambda: not live(cluster, SECRETS).get(name) and not live(cluster, POLICIES)
                         and not live(cluster, PODS), timeout=90, what="the Secret, the NetworkPolicy and the pods gone with the job")


async def test_without_network_policy_peers_no_policy_is_made(cluster):
    async with running_operator(cluster, telemetry=Telemetry()):  # the chart's default: networkPolicy.enabled false
        await create_job(cluster, tiny_job())
        await eventually(lambda: len(pods_of(cluster, 1)) == 2, what="generation 1")
        assert [n for n in live(cluster, SECRETS) if n.startswith("tiny-telemetry-")]  # the token does not depend on it
        assert not live(cluster, POLICIES)
