"""What kube-apiserver's admission asks of the operator: its own webhook, called over TLS,
rejects bad TrainingJobs naming the field; the pods it makes pass PodSecurity and the
name limits; a name a Service cannot take is refused by the CRD's rule."""

from __future__ import annotations

import base64
import copy

import kopf
import pytest

from shardwright.operator import handlers, webhook
from shardwright.operator.backends.pods import LABEL_REPLICA
from shardwright.operator.backends.ports import free_port

from .kubeapi import (
    TJ, ApiError, create_job, eventually, get, path, passes, pods_of, posted_events, refused, running_operator, tiny_job,
)
from .kubehttp import SERVICES, WEBHOOKS

pytestmark = pytest.mark.cluster


async def test_webhook_rejects_a_bad_object_naming_the_field(cluster):
    """The API server calls the operator's webhook over TLS (a certificate from the control
    plane's CA, as the chart's Secret would hold) for this namespace's TrainingJobs."""
    port = free_port()
    cert, key = cluster.cp.pki.sign(f"webhook-{cluster.namespace}", ips=("127.0.0.1",))
    server = webhook.AdmissionServer(handlers.admit, addr="127.0.0.1", port=port, certfile=cert, keyfile=key)
    config = webhook_configuration(cluster, port)
    cluster.api.request("POST", path(WEBHOOKS), config)
    cluster.made.append((WEBHOOKS, config["metadata"]["name"]))
    # The API server loads a new webhook configuration a moment later: until it calls the
    # (not yet started) webhook and fails, a create is not judged by it at all.
    await eventually(lambda: refused(cluster, TJ, tiny_job("probe"), "failed calling webhook"), what="the webhook configuration in effect")
    await server.start()
    try:
        bad = tiny_job()
        bad["spec"]["model"]["heads"] = 5  # does not divide dim 64
        denied = await eventually(lambda: denial(cluster, bad), what="the webhook's answer (it starts after the operator)")
        assert denied.status == 422 and "spec.model.heads" in str(denied) and "trainingjobs.shardwright.io" in str(denied)
        over = tiny_job()  # what the CRD's schema cannot see: two values compared
        over["spec"]["workers"][0]["resources"] = {"requests": {"cpu": 2}, "limits": {"cpu": "1500m"}}
        denied = await eventually(lambda: denial(cluster, over), what="the webhook's answer (a loaded machine may time a call out)")
        assert denied.status == 422 and "spec.workers[0].resources.requests.cpu: must be \\u003c= limits.cpu (1500m)" in str(denied), denied  # JSON escapes <
        assert (await create_job(cluster, tiny_job()))["metadata"]["name"] == "tiny"
    finally:
        await server.stop()


def webhook_configuration(cluster, port: int) -> dict:
    """The chart's ValidatingWebhookConfiguration, with a URL for the operator in this process
    and limited to this test's namespace."""
    return {
        "apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingWebhookConfiguration",
        "metadata": {"name": f"shardwright-{cluster.namespace}"},
        "webhooks": [{
            "name": "trainingjobs.shardwright.io", "admissionReviewVersions": ["v1"], "sideEffects": "None",
            "failurePolicy": "Fail", "timeoutSeconds": 10,
            "clientConfig": {"url": f"https://127.0.0.1:{port}/admit",  # Kopf's path: the handler id
                             "caBundle": base64.b64encode(cluster.cp.pki.ca_cert.read_bytes()).decode()},
            "rules": [{"apiGroups": ["shardwright.io"], "apiVersions": ["v1alpha1"], "resources": ["trainingjobs"],
                       "operations": ["CREATE", "UPDATE"], "scope": "Namespaced"}],
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": cluster.namespace}},
        }],
    }


def denial(cluster, doc: dict) -> ApiError | None:
    """The API server's refusal of ``doc`` by the webhook; None while the webhook does not answer yet."""
    try:
        cluster.api.request("POST", cluster.path(TJ), doc)
    except ApiError as e:
        return e if "denied the request" in str(e) else None
    pytest.fail("the bad TrainingJob was created")


async def test_pods_pass_the_restricted_pod_security_level(cluster):
    """REVIEW-operator finding 4: every pod carries the restricted profile's securityContext
    (pods.POD_SECURITY, CONTAINER_SECURITY), so a namespace enforcing it runs the job."""
    cluster.api.merge(f"/api/v1/namespaces/{cluster.namespace}", {"metadata": {"labels": {"pod-security.kubernetes.io/enforce": "restricted"}}})
    async with running_operator(cluster) as memo:
        await create_job(cluster, tiny_job())
        await passes(memo, 3)  # the first creates the pods
        assert len(pods_of(cluster, 1)) == 2, posted_events(cluster, "ReconcileFailed")


async def test_a_60_character_job_name_runs_with_pod_names_that_fit(cluster):
    """REVIEW-operator finding 15: a pod's name is its hostname, a DNS label of at most 63
    characters. ``<job>-g<generation>-<group>-<replica>`` for a 60-character job is cut to
    a prefix of the job and a hash of it, so every pod is created; the Service keeps the
    job's name (its subdomain)."""
    name = "llama-3-8b-instruct-finetune-on-the-support-tickets-of-2026q"
    assert len(name) == 60
    async with running_operator(cluster) as memo:
        await create_job(cluster, tiny_job(name))
        await passes(memo, 3)  # the first creates the pods
        made = pods_of(cluster, 1, job=name)
        assert len(made) == 2, posted_events(cluster, "ReconcileFailed")
        for pod_name, pod in made.items():
            assert len(pod_name) <= 63 and pod["spec"]["hostname"] == pod_name and pod["spec"]["subdomain"] == name
            assert pod_name.startswith(name[:30]) and pod_name.endswith(f"-g1-worker-{pod['metadata']['labels'][LABEL_REPLICA]}")
        assert get(cluster, SERVICES, name)


async def test_a_job_whose_name_starts_with_a_digit_is_refused_naming_the_field(cluster):
    """The job's name is its Service's, and a Service name is a DNS-1035 label (an API server
    without relaxed Service names refuses "7b-run"): the CRD's rule says so at create."""
    with pytest.raises(ApiError) as refused:
        await create_job(cluster, tiny_job("7b-run"))
    assert refused.value.status == 422 and "metadata.name must be a DNS-1035 label" in str(refused.value), refused.value


def test_an_update_is_not_judged_on_the_name():
    """As the CRD's rule, the webhook judges a name at create only: a job named before the
    rule ("7b-run") keeps taking edits, and the rest of an edit is still checked."""
    job = tiny_job("7b-run")
    with pytest.raises(kopf.AdmissionError, match="metadata.name: must be a DNS-1035 label"):
        handlers.admit(body=job)
    assert handlers.admit(body=job, old=job) is None
    broken = tiny_job("7b-run")
    broken["spec"]["model"]["heads"] = 5
    with pytest.raises(kopf.AdmissionError, match=r"^spec.model.heads: must divide dim"):
        handlers.admit(body=broken, old=job)
    # An update that leaves the spec alone is never judged: a job today's rules refuse still
    # takes its labels, finalizer removal and status.
    relabelled = copy.deepcopy(broken)
    relabelled["metadata"].update(labels={"team": "a"}, finalizers=[])
    relabelled["status"] = {"phase": "Failed"}
    assert handlers.admit(body=relabelled, old=broken) is None
