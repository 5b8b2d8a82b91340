"""The operator survives its own restarts, and kube-apiserver calls its admission webhook
over TLS to reject bad objects. (Answers of 500 and 409 on cue: test_api_faults.py.)"""

from __future__ import annotations

import dataclasses

import pytest

from shardwright.operator.backends.ports import free_port

from .kubeapi import (
    FAST, PODS, TJ, WEBHOOKS, ApiError, Telemetry, ca_bundle, create_job, eventually, job_status, live, path,
    pod_creates, run_all, running_operator, sent, tiny_job,
)

pytestmark = pytest.mark.cluster


def uids(cluster) -> dict[str, str]:
    return {name: pod["metadata"]["uid"] for name, pod in live(cluster, PODS).items()}


async def test_restarted_operator_adopts_its_pods_without_duplicates(cluster):
    telemetry = Telemetry()
    async with running_operator(cluster, telemetry=telemetry):
        await create_job(cluster, tiny_job())
        await eventually(lambda: job_status(cluster).get("generation") == 1 and len(live(cluster, PODS)) == 2)
    creates, before = pod_creates(cluster), uids(cluster)
    async with running_operator(cluster, telemetry=telemetry):
        await run_all(cluster, 1, step=40, telemetry=telemetry)
        await eventually(lambda: job_status(cluster).get("phase") == "Running", what="Running after restart")
        assert uids(cluster) == before and sorted(before) == ["tiny-g1-worker-0", "tiny-g1-worker-1"]
        assert pod_creates(cluster) == creates and job_status(cluster)["restarts"] == 0


async def test_stopped_between_creating_pods_and_writing_status(cluster):
    """The operator stops after creating the pods but before its status write landed (the
    test erases the written status while no operator runs). The next operator sees pods of a
    generation its status does not know: it stops them and starts that generation again
    under the same names, so there are never two live copies of a pod."""
    async with running_operator(cluster):
        await create_job(cluster, tiny_job())
        await eventually(lambda: len(live(cluster, PODS)) == 2 and job_status(cluster).get("generation") == 1)
    cluster.api.merge(cluster.path(TJ, "tiny", "status"), {"status": None})
    assert job_status(cluster) == {}
    before = uids(cluster)
    async with running_operator(cluster):
        await eventually(lambda: job_status(cluster).get("generation") == 1 and len(live(cluster, PODS)) == 2, what="generation 1")
        await eventually(lambda: not set(uids(cluster).values()) & set(before.values()), what="the pods made again")
    assert sorted(live(cluster, PODS)) == ["tiny-g1-worker-0", "tiny-g1-worker-1"]
    creates = [r.body["metadata"]["name"] for r in sent(cluster, "POST", lambda p: p.endswith("/pods"))]
    deletes = [r.path.split("?")[0].rsplit("/", 1)[1] for r in sent(cluster, "DELETE", lambda p: "/pods/" in p)]
    # Every create after the first pair followed the delete of the same name.
    assert len(creates) - len(deletes) == 2 and sorted(creates[2:]) == sorted(deletes)


async def test_webhook_rejects_a_bad_object_naming_the_field(cluster):
    """The API server calls the operator's webhook over TLS (a certificate from the control
    plane's CA, as the chart's Secret would hold) for this namespace's TrainingJobs."""
    port = free_port()
    cert, key = cluster.cp.pki.sign(f"webhook-{cluster.namespace}", ips=("127.0.0.1",))
    tls = dataclasses.replace(FAST, webhook_port=port, webhook_certfile=str(cert), webhook_pkeyfile=str(key), webhook_insecure=False)
    name = f"shardwright-{cluster.namespace}"
    cluster.api.request("POST", path(WEBHOOKS), {
        "apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingWebhookConfiguration", "metadata": {"name": name},
        "webhooks": [{
            "name": "trainingjobs.shardwright.io", "admissionReviewVersions": ["v1"], "sideEffects": "None",
            "failurePolicy": "Fail", "timeoutSeconds": 10,
            "clientConfig": {"url": f"https://127.0.0.1:{port}/admit", "caBundle": ca_bundle(cluster)},  # Kopf's path: the handler id
            "rules": [{"apiGroups": ["shardwright.io"], "apiVersions": ["v1alpha1"], "resources": ["trainingjobs"],
                       "operations": ["CREATE", "UPDATE"], "scope": "Namespaced"}],
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": cluster.namespace}},
        }],
    })
    cluster.made.append((WEBHOOKS, name))
    async with running_operator(cluster, tls):
        bad = tiny_job()
        bad["spec"]["model"]["heads"] = 5  # does not divide dim 64
        denied = await eventually(lambda: denial(cluster, bad), what="the webhook's answer (it starts after the operator)")
        assert denied.status == 422 and "spec.model.heads" in str(denied) and "trainingjobs.shardwright.io" in str(denied)
        assert (await create_job(cluster, tiny_job()))["metadata"]["name"] == "tiny"


def denial(cluster, doc: dict) -> ApiError | None:
    """The API server's refusal of ``doc`` by the webhook; None while the webhook does not answer yet."""
    try:
        cluster.api.request("POST", cluster.path(TJ), doc)
    except ApiError as e:
        return e if "denied the request" in str(e) else None
    pytest.fail("the bad TrainingJob was created")
