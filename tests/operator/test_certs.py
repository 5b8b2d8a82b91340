"""The webhook's certificates without a cluster: what is issued, when it must be renewed
(a fake clock), that a renewal keeps the CA (so the ``caBundle``), and that the server
presents a renewed certificate on the next connection without closing its listener."""

from __future__ import annotations

import datetime
import ssl

import kopf
import pytest
from cryptography import x509

from shardwright.operator import certs, webhook

NAMES = certs.service_names("sw-shardwright", "shardwright-system")
T0 = datetime.datetime(2026, 12, 7, tzinfo=datetime.timezone.utc)


def test_a_new_bundle_serves_the_services_names_under_its_ca():
    bundle = certs.issue(NAMES, T0)
    assert certs.problem(bundle, NAMES, T0) is None
    cert = x509.load_pem_x509_certificate(bundle.cert)
    assert "sw-shardwright.shardwright-system.svc" in cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName)
    assert certs.from_data(certs.to_data(bundle)) == bundle


@pytest.mark.parametrize("data", [None, {}, {"ca.crt": "", "tls.crt": "", "tls.key": ""}], ids=["no-data", "empty", "empty-values"])
def test_an_empty_secret_holds_no_bundle(data):
    assert certs.from_data(data) is None
    assert certs.problem(None, NAMES, T0) == "no certificate yet"


def test_the_serving_certificate_is_renewed_a_month_before_it_expires_under_the_same_ca():
    bundle = certs.issue(NAMES, T0)
    assert certs.problem(bundle, NAMES, T0 + certs.SERVING_VALIDITY - certs.RENEW_BEFORE - datetime.timedelta(hours=1)) is None
    later = T0 + certs.SERVING_VALIDITY - certs.RENEW_BEFORE + datetime.timedelta(hours=1)
    assert certs.problem(bundle, NAMES, later).startswith("tls.crt expires at")
    renewed = certs.issue(NAMES, later, bundle)
    assert renewed.ca_cert == bundle.ca_cert and renewed.cert != bundle.cert  # the caBundle stays
    assert certs.problem(renewed, NAMES, later) is None


def test_a_ca_that_would_not_outlive_the_next_certificate_is_replaced():
    bundle = certs.issue(NAMES, T0)
    late = T0 + certs.CA_VALIDITY - certs.SERVING_VALIDITY
    assert certs.problem(bundle, NAMES, late).startswith("ca.crt expires at")
    assert certs.issue(NAMES, late, bundle).ca_cert != bundle.ca_cert


def test_other_names_a_foreign_ca_or_a_wrong_key_are_problems():
    bundle, other = certs.issue(NAMES, T0), certs.issue(certs.service_names("other", "ns"), T0)
    assert certs.problem(other, NAMES, T0).startswith("tls.crt is not for sw-shardwright")
    assert certs.problem(certs.Bundle(bundle.ca_cert, bundle.ca_key, other.cert, other.key), NAMES, T0) == "tls.crt is not signed by ca.crt"
    assert certs.problem(certs.Bundle(bundle.ca_cert, bundle.ca_key, bundle.cert, other.key), NAMES, T0) == "tls.key is not the key of tls.crt"
    assert certs.problem(certs.Bundle(bundle.ca_cert, b"", bundle.cert, bundle.key), NAMES, T0) == "no CA to sign with"
    # Brought (cert-manager writes no ca.key, and may write no ca.crt): judged without the CA's key.
    assert certs.problem(certs.Bundle(bundle.ca_cert, b"", bundle.cert, bundle.key), NAMES, T0, signs=False) is None
    assert certs.problem(certs.Bundle(b"", b"", bundle.cert, bundle.key), NAMES, T0, signs=False) is None
    assert certs.problem(certs.Bundle(b"junk", bundle.ca_key, bundle.cert, bundle.key), NAMES, T0).startswith("unreadable")


def _refuse_heads(obj, old=None):
    if obj["spec"].get("heads") == 5:
        raise kopf.AdmissionError("spec.model.heads: must divide dim", code=422)


@pytest.mark.parametrize(("operation", "obj", "allowed"), [
    ("CREATE", {"spec": {"heads": 5}}, False),
    ("CREATE", {"spec": {"heads": 4}}, True),
    ("UPDATE", {"spec": {"heads": 5}}, False),
    ("DELETE", {}, True),
])
def test_a_review_is_answered_with_the_uid_and_the_handlers_message(operation, obj, allowed):
    review = {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
              "request": {"uid": "u-1", "operation": operation, "object": obj, "oldObject": {"spec": {}}}}
    answer = webhook.respond(review, _refuse_heads)["response"]
    assert answer["uid"] == "u-1" and answer["allowed"] is allowed
    if not allowed:
        assert answer["status"] == {"code": 422, "message": "spec.model.heads: must divide dim"}


async def served(port: int) -> str:
    import asyncio

    _, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ssl._create_unverified_context())
    der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
    writer.close()
    return certs.fingerprint(der)


async def test_a_renewed_certificate_is_served_on_the_next_connection_by_the_same_listener(tmp_path):
    first = certs.issue(("127.0.0.1",), T0)
    (tmp_path / "tls.crt").write_bytes(first.cert)
    (tmp_path / "tls.key").write_bytes(first.key)
    server = webhook.AdmissionServer(_refuse_heads, addr="127.0.0.1", port=None, certfile=tmp_path / "tls.crt", keyfile=tmp_path / "tls.key")
    port = await server.start()
    try:
        assert await served(port) == certs.fingerprint(first.cert) and await server.serves_current_certificate()
        renewed = certs.issue(("127.0.0.1",), T0, first)
        (tmp_path / "tls.key").write_bytes(renewed.key)
        (tmp_path / "tls.crt").write_bytes(renewed.cert)
        assert not await server.serves_current_certificate()  # files renewed, not loaded yet: not ready
        server.reload()
        assert await served(port) == certs.fingerprint(renewed.cert) and await server.serves_current_certificate()
    finally:
        await server.stop()
