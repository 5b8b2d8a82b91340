"""Two operator replicas keeping the webhook certificate on the real API server
(``certrotation``): starting at once they issue one certificate between them (the Secret is
written with the resourceVersion read: one write wins, the other reads it); the CA becomes the
caBundle and comes back when cleared; a renewal keeps the CA and reaches the other replica."""

from __future__ import annotations

import asyncio
import base64
import datetime
import threading

import pytest

from shardwright.operator import certs, handlers
from shardwright.operator.certrotation import CertRotator, RotationSettings

from .kubeapi import path
from .kubehttp import WEBHOOKS

pytestmark = pytest.mark.cluster
SECRETS = "v1/secrets"


def ca_bundle(cluster, name: str) -> str | None:
    return cluster.api.request("GET", path(WEBHOOKS, name=name))["webhooks"][0]["clientConfig"].get("caBundle")


def setup(cluster, tmp_path) -> tuple[str, list[RotationSettings]]:
    """An empty Secret and a webhook configuration without caBundle, as the chart makes them
    (this one judges nothing: no namespace carries its label)."""
    name = f"shardwright-{cluster.namespace}"
    cluster.api.request("POST", cluster.path(SECRETS), {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "webhook-cert"}, "type": "Opaque"})
    cluster.api.request("POST", path(WEBHOOKS), {
        "apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingWebhookConfiguration", "metadata": {"name": name},
        "webhooks": [{"name": "trainingjobs.shardwright.io", "admissionReviewVersions": ["v1"], "sideEffects": "None",
                      "failurePolicy": "Ignore", "clientConfig": {"service": {"name": "sw", "namespace": cluster.namespace, "path": "/admit"}},
                      "namespaceSelector": {"matchLabels": {"e2e.shardwright.io/never": "true"}},
                      "rules": [{"apiGroups": ["shardwright.io"], "apiVersions": ["v1alpha1"], "resources": ["trainingjobs"], "operations": ["CREATE"]}]}],
    })
    cluster.made.append((WEBHOOKS, name))
    return name, [RotationSettings(namespace=cluster.namespace, secret="webhook-cert", cert_dir=tmp_path / replica, service="sw",
                                   webhook_configuration=name) for replica in ("a", "b")]


async def test_two_replicas_starting_at_once_issue_one_certificate(cluster, tmp_path):
    name, settings = setup(cluster, tmp_path)
    replicas = [CertRotator(handlers.api_client(), s) for s in settings]
    together = threading.Barrier(2)

    def start(rotator: CertRotator) -> bool:
        together.wait()
        return rotator.sync()

    assert await asyncio.gather(*(asyncio.to_thread(start, r) for r in replicas)) == [True, True]
    a, b = (r.current for r in replicas)
    assert a == b and certs.problem(a, certs.service_names("sw", cluster.namespace), datetime.datetime.now(datetime.timezone.utc)) is None
    assert cluster.api.request("GET", cluster.path(SECRETS, "webhook-cert"))["data"] == certs.to_data(a)
    assert base64.b64decode(ca_bundle(cluster, name)) == a.ca_cert
    assert (tmp_path / "a" / "tls.crt").read_bytes() == (tmp_path / "b" / "tls.crt").read_bytes() == a.cert
    # Nothing to do the next time: no write, the files as they were.
    version = cluster.api.request("GET", cluster.path(SECRETS, "webhook-cert"))["metadata"]["resourceVersion"]
    assert replicas[0].sync() is False
    assert cluster.api.request("GET", cluster.path(SECRETS, "webhook-cert"))["metadata"]["resourceVersion"] == version

    # A cleared caBundle (a replace by some tool) is set again at the next check.
    cluster.api.request("PATCH", path(WEBHOOKS, name=name), [{"op": "remove", "path": "/webhooks/0/clientConfig/caBundle"}],
                        content_type="application/json-patch+json")
    assert ca_bundle(cluster, name) is None
    replicas[1].sync()
    assert base64.b64decode(ca_bundle(cluster, name)) == a.ca_cert


async def test_a_renewal_keeps_the_ca_and_reaches_the_other_replica(cluster, tmp_path):
    name, settings = setup(cluster, tmp_path)
    now = datetime.datetime.now(datetime.timezone.utc)
    early = CertRotator(handlers.api_client(), settings[0])
    assert early.sync()
    late = CertRotator(handlers.api_client(), settings[1], clock=lambda: now + certs.SERVING_VALIDITY - certs.RENEW_BEFORE + datetime.timedelta(days=1))
    assert late.sync()
    assert late.current.cert != early.current.cert and late.current.ca_cert == early.current.ca_cert
    assert base64.b64decode(ca_bundle(cluster, name)) == early.current.ca_cert  # the caBundle stays
    assert early.sync() is True and early.current == late.current  # re-read: the renewed certificate
