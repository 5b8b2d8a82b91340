"""The admission webhook's certificates as values: a CA and a serving certificate it signed,
made, judged and carried in a Secret's ``data``. Pure (a clock is passed in), so every
rule is unit-tested without a cluster; ``certrotation`` does the reading and writing.

The scheme is that of open-policy-agent's cert-controller (Kueue, JobSet): a long-lived CA
whose certificate is the webhook configuration's ``caBundle``, and a shorter-lived serving
certificate for the Service's DNS names, re-issued under the same CA well before it
expires, so a renewal never changes the ``caBundle``.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime
import hashlib
from collections.abc import Sequence

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

#: The CA outlives many serving certificates: its renewal is the only one that changes the
#: ``caBundle`` (cert-controller's choice too).
CA_VALIDITY = datetime.timedelta(days=3650)
SERVING_VALIDITY = datetime.timedelta(days=365)
#: Renew a certificate this long before it expires: replicas re-read the Secret every
#: minute, so any margin works; a month leaves room for an operator that was down.
RENEW_BEFORE = datetime.timedelta(days=30)
#: Keys of the Secret's data (``tls.crt``/``tls.key`` as kubernetes.io/tls names them;
#: ``ca.crt`` as cert-manager writes it; ``ca.key`` only where this operator signs).
KEYS = ("ca.crt", "ca.key", "tls.crt", "tls.key")


@dataclasses.dataclass(frozen=True)
class Bundle:
    """PEM bytes of a CA and of the serving certificate it signed, with their keys."""

    ca_cert: bytes
    ca_key: bytes
    cert: bytes
    key: bytes


def service_names(service: str, namespace: str) -> tuple[str, ...]:
    """The DNS names the API server may call a Service by (it uses ``<svc>.<ns>.svc``)."""
    return (service, f"{service}.{namespace}", f"{service}.{namespace}.svc", f"{service}.{namespace}.svc.cluster.local")


def issue(names: Sequence[str], now: datetime.datetime, previous: Bundle | None = None) -> Bundle:
    """A serving certificate for ``names``; signed by ``previous``'s CA when that CA is still
    good (the ``caBundle`` stays), else by a new CA."""
    if previous is not None and _ca_problem(previous, now) is None:
        ca_cert, ca_key = previous.ca_cert, previous.ca_key
    else:
        ca_cert, ca_key = _new_ca(names[0], now)
    ca = x509.load_pem_x509_certificate(ca_cert)
    signer = serialization.load_pem_private_key(ca_key, password=None)
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))  # clocks of other replicas may lag
        .not_valid_after(now + SERVING_VALIDITY)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(signer, hashes.SHA256())
    )
    return Bundle(ca_cert=ca_cert, ca_key=ca_key, cert=cert.public_bytes(serialization.Encoding.PEM), key=_pem_key(key))


def problem(bundle: Bundle | None, names: Sequence[str], now: datetime.datetime, *, signs: bool = True) -> str | None:
    """Why ``bundle`` must not be served as it is (None: it may). ``signs``: this operator
    keeps the CA, so its key must be there and the CA must not be about to expire too."""
    if bundle is None:
        return "no certificate yet"
    try:
        cert = x509.load_pem_x509_certificate(bundle.cert)
        key = serialization.load_pem_private_key(bundle.key, password=None)
        ca = x509.load_pem_x509_certificate(bundle.ca_cert) if bundle.ca_cert else None
    except ValueError as e:
        return f"unreadable: {e}"
    if signs and (why := _ca_problem(bundle, now)) is not None:
        return why
    if cert.public_key() != key.public_key():
        return "tls.key is not the key of tls.crt"
    try:
        if ca is not None:
            cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        return "tls.crt is not signed by ca.crt"
    if cert.not_valid_after_utc - now < RENEW_BEFORE:
        return f"tls.crt expires at {cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC"
    try:
        have = set(cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName))
    except x509.ExtensionNotFound:
        have = set()
    if missing := [n for n in names if n not in have]:
        return f"tls.crt is not for {', '.join(missing)}"
    return None


def from_data(data: dict[str, str] | None) -> Bundle | None:
    """The bundle in a Secret's ``data`` (base64 values); None without ``tls.crt`` and
    ``tls.key`` (a Secret the chart created empty). ``ca.crt`` and ``ca.key`` may be missing
    where another issuer signs (cert-manager writes ``ca.crt`` only)."""
    data = data or {}
    if not data.get("tls.crt") or not data.get("tls.key"):
        return None
    return Bundle(**{f: base64.b64decode(data.get(k) or "") for f, k in zip(("ca_cert", "ca_key", "cert", "key"), KEYS)})


def to_data(bundle: Bundle) -> dict[str, str]:
    """A Secret's ``data`` for ``bundle``."""
    values = (bundle.ca_cert, bundle.ca_key, bundle.cert, bundle.key)
    return {k: base64.b64encode(v).decode() for k, v in zip(KEYS, values)}


def fingerprint(cert: bytes) -> str:
    """SHA-256 of a certificate (PEM or DER): what a TLS client sees, to compare."""
    der = x509.load_pem_x509_certificate(cert).public_bytes(serialization.Encoding.DER) if cert.startswith(b"-----") else cert
    return hashlib.sha256(der).hexdigest()


def _ca_problem(bundle: Bundle, now: datetime.datetime) -> str | None:
    if not bundle.ca_key or not bundle.ca_cert:
        return "no CA to sign with"
    try:
        ca = x509.load_pem_x509_certificate(bundle.ca_cert)
        key = serialization.load_pem_private_key(bundle.ca_key, password=None)
    except ValueError as e:
        return f"unreadable CA: {e}"
    if ca.public_key() != key.public_key():
        return "ca.key is not the key of ca.crt"
    # The CA must outlive the serving certificate it signs next, else that one is cut short.
    if ca.not_valid_after_utc - now < SERVING_VALIDITY + RENEW_BEFORE:
        return f"ca.crt expires at {ca.not_valid_after_utc:%Y-%m-%d %H:%M} UTC"
    return None


def _new_ca(name: str, now: datetime.datetime) -> tuple[bytes, bytes]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{name}-ca")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + CA_VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                                     key_encipherment=False, data_encipherment=False, key_agreement=False,
                                     encipher_only=False, decipher_only=False), critical=True)
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM), _pem_key(key)


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
