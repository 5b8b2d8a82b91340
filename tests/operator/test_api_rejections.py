"""A permanent API error on the local control plane: the API server refuses the job's pods
(a ValidatingAdmissionPolicy answering 422 Invalid, as a bad pod template or a cluster
policy would). Issue 16: one condition with the server's message, one event, and retries
that back off instead of recreating the gang every few seconds."""

from __future__ import annotations

import asyncio

import pytest

from .kubeapi import PODS, create_job, eventually, job_status, live, passes, path, pod_creates, posted_events, refused, running_operator, sent, tiny_job

pytestmark = pytest.mark.cluster

POLICIES = "admissionregistration.k8s.io/v1/validatingadmissionpolicies"
BINDINGS = "admissionregistration.k8s.io/v1/validatingadmissionpolicybindings"


#: Refuses every pod of a TrainingJob.
EVERY_POD = "!has(object.metadata.labels) || !('shardwright.io/job' in object.metadata.labels)"
#: Refuses the pod of rank 1 only.
RANK_1 = "!has(object.metadata.labels) || !('shardwright.io/rank' in object.metadata.labels) || object.metadata.labels['shardwright.io/rank'] != '1'"


async def refuse_pods(cluster, *, message: str, expression: str = EVERY_POD) -> None:
    """Pods that ``expression`` turns down, in the test's namespace, are refused with 422."""
    name = f"{cluster.namespace}-refuse"
    policy = {
        "apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicy", "metadata": {"name": name},
        "spec": {
            "failurePolicy": "Fail",
            "matchConstraints": {"resourceRules": [{"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE"], "resources": ["pods"]}]},
            "validations": [{"expression": expression, "message": message, "reason": "Invalid"}],
        },
    }
    binding = {
        "apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicyBinding", "metadata": {"name": name},
        "spec": {"policyName": name, "validationActions": ["Deny"],
                 "matchResources": {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": cluster.namespace}}}},
    }
    for resource, body in ((POLICIES, policy), (BINDINGS, binding)):
        await asyncio.to_thread(cluster.api.request, "POST", path(resource), body)
        cluster.made.append((resource, name))
    # Policies take effect once the API server has loaded them: probe with a pod of our own.
    probe = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "probe", "labels": {"shardwright.io/job": "probe", "shardwright.io/rank": "1"}},
             "spec": {"containers": [{"name": "c", "image": "none"}]}}
    await eventually(lambda: refused(cluster, PODS, probe, "422"), what="the policy in effect")


async def test_a_refused_pod_becomes_one_condition_and_backed_off_retries(cluster):
    await refuse_pods(cluster, message="pods of TrainingJobs need an approved image here")
    async with running_operator(cluster) as memo:
        await create_job(cluster, tiny_job())
        condition = await eventually(lambda: next((c for c in job_status(cluster).get("conditions", []) if c["reason"] == "ApiRejected"), None),
                                     what="the refusal in status")
        assert condition["type"] == "Running" and condition["status"] == "False"
        assert "422" in condition["message"] and "need an approved image here" in condition["message"]
        first = pod_creates(cluster)
        await asyncio.sleep(8)
        # Backoff from 0.2 s doubling (+-20 %): at most about 6 attempts in 8 s, not 40 (resync
        # 0.2 s); an attempt creates the generation's two pods side by side.
        assert pod_creates(cluster) - first <= 2 * 7, pod_creates(cluster) - first
        assert len(posted_events(cluster, "ApiRejected")) == 1
        assert not live(cluster, PODS)
        # Each retry writes its generation as intent before creating pods, and takes it back
        # the moment the create is refused: a read can fall in between, but none stays there.
        status = await eventually(lambda: (s := job_status(cluster)).get("generation", 0) == 0 and s, timeout=5,
                                  what="the refused generation taken back")
        assert status.get("restarts", 0) == 0
        await passes(memo, 1)


async def test_a_gang_with_one_pod_refused_takes_back_the_pods_it_made(cluster):
    """A generation's pods are created side by side; when the API server refuses one, the
    ones it accepted are deleted in the same pass: no partial gang waits in its rendezvous."""
    await refuse_pods(cluster, message="rank 1 may not run here", expression=RANK_1)
    async with running_operator(cluster) as memo:
        await create_job(cluster, tiny_job())
        await eventually(lambda: any(c["reason"] == "ApiRejected" for c in job_status(cluster).get("conditions", [])), what="the refusal in status")
        await passes(memo, 2)
    creates = sent(cluster, "POST", lambda p: p.endswith("/pods"))
    made = {r.body["metadata"]["name"] for r in creates if r.status == 201}
    refused_ranks = {r.body["metadata"]["labels"]["shardwright.io/rank"] for r in creates if r.status == 422}
    assert made and refused_ranks == {"1"}, [(r.body["metadata"]["name"], r.status) for r in creates]
    assert {r.body["metadata"]["labels"]["shardwright.io/rank"] for r in creates if r.status == 201} == {"0"}
    taken_back = {r.path.split("?")[0].rsplit("/", 1)[1] for r in sent(cluster, "DELETE", lambda p: "/pods/" in p)}
    assert made <= taken_back, (made, taken_back)
    assert not live(cluster, PODS, "shardwright.io/job=tiny")
