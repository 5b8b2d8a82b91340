"""A job's data plane on the local control plane: its token Secret (made once, owned by the
job, gone with it), the token its pods read by reference and the operator sends with every
probe, also after a restart; its NetworkPolicy when the operator is told to make one."""

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


async def test_the_token_is_made_once_sent_with_every_probe_and_read_back_after_a_restart(cluster, monkeypatch):
    telemetry = Telemetry()
    async with running_operator(cluster, FENCED, telemetry=telemetry):
        job = await create_job(cluster, tiny_job(failurePolicy={"maxRestarts": 2, "backoff": {"initialSeconds": 0, "maxSeconds": 0}}))
        await eventually(lambda: len(pods_of(cluster, 1)) == 2, what="generation 1")
        secret = get(cluster, SECRETS, "tiny-telemetry")
        (owner,) = secret["metadata"]["ownerReferences"]
        assert owner["uid"] == job["metadata"]["uid"] and owner["controller"] is True and secret["immutable"] is True
        token = base64.b64decode(secret["data"]["token"]).decode()
        assert len(token) == 43
        for pod in pods_of(cluster, 1).values():
            assert token not in json.dumps(pod)  # by reference only
            assert {"name": "SHARDWRIGHT_TELEMETRY_TOKEN", "valueFrom": {"secretKeyRef": {"name": "tiny-telemetry", "key": "token"}}} \
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

    # A new operator process: it knows no token, and reads the job's once from the Secret.
    monkeypatch.setattr(dataplane, "TOKENS", dataplane.Tokens())
    again = Telemetry(answers=telemetry.answers)
    reads_before = len(sent(cluster, "GET", lambda p: p.endswith("/secrets/tiny-telemetry")))
    async with running_operator(cluster, FENCED, telemetry=again) as memo:
        await run_all(cluster, 2, step=80, telemetry=again)
        await eventually(lambda: job_status(cluster).get("step") == 80, what="step 80 from generation 2")
        await passes(memo, 3)
        assert again.tokens and set(again.tokens) == {token}
        assert len(sent(cluster, "GET", lambda p: p.endswith("/secrets/tiny-telemetry"))) == reads_before + 1
        assert secret_creates(cluster) == 1

        await delete(cluster, TJ, "tiny")
        # The garbage collector follows the ownerReferences.
        await eventually(lambda: not live(cluster, SECRETS).get("tiny-telemetry") and not live(cluster, POLICIES)
                         and not live(cluster, PODS), timeout=90, what="the Secret, the NetworkPolicy and the pods gone with the job")


async def test_without_network_policy_peers_no_policy_is_made(cluster):
    async with running_operator(cluster, telemetry=Telemetry()):  # the chart's default: networkPolicy.enabled false
        await create_job(cluster, tiny_job())
        await eventually(lambda: len(pods_of(cluster, 1)) == 2, what="generation 1")
        assert get(cluster, SECRETS, "tiny-telemetry") is not None  # the token does not depend on it
        assert not live(cluster, POLICIES)
