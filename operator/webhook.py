"""The admission webhook: an HTTPS server every operator replica runs, leader or not.

The API server sends each TrainingJob create and update here (the chart's
ValidatingWebhookConfiguration); ``respond`` turns the AdmissionReview into one call of the
handlers' ``admit`` and its refusal into the review's answer. It does not run inside Kopf
(Kopf runs only on the Lease's leader), so a standby replica answers while the leader is
down or being replaced. Its certificate comes from ``certrotation`` (a Secret every replica
keeps current) or, out of a cluster, from files; a renewed certificate is loaded into the
same TLS context, so new connections get it without the listener closing.
"""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp.web
import kopf

from shardwright.operator import certs
from shardwright.operator.certrotation import CertRotator, RotationSettings

log = logging.getLogger(__name__)
#: ``admit(object, old=oldObject)``: returns to allow, raises ``kopf.AdmissionError`` to refuse.
Admit = Callable[..., None]


class ConfigError(Exception):
    """A start-up setting that cannot work; the CLI prints it as one line and exits 2."""


def tls_files(cert_dir: Path, mode: str) -> tuple[str, str] | None:
    """The webhook's (certificate, key) files in ``cert_dir``, or None to serve no webhook.

    ``mode`` ``on`` needs both files; ``auto`` serves the webhook only when they exist: a
    laptop with a kubeconfig runs the operator without one (the API server could not call it
    there anyway). In a cluster the chart names a Secret instead (``from_secret``)."""
    cert, key = cert_dir / "tls.crt", cert_dir / "tls.key"
    present = cert.is_file() and key.is_file()
    if mode == "off" or (mode == "auto" and not present):
        if mode == "auto":
            log.info(f"Admission webhook off: no tls.crt and tls.key in {cert_dir} (--webhook-cert-dir); "
                     "objects are still checked by the CRD schema and by every reconcile")
        return None
    if not present:
        missing = " and ".join(str(p) for p in (cert, key) if not p.is_file())
        raise ConfigError(f"webhook certificate not found: {missing}; pass --webhook-secret, --webhook-cert-dir, or --webhook=off")
    return str(cert), str(key)


def from_secret(cert_dir: Path, *, secret: str, namespace: str | None, service: str | None,
                configuration: str | None) -> RotationSettings:
    """The certificate of Secret ``namespace/secret``, written into ``cert_dir`` to be served:
    issued by this operator when ``service`` and ``configuration`` are named (self-signed,
    its CA set as that configuration's caBundle), else brought (cert-manager) and only read."""
    if not namespace:
        raise ConfigError("--webhook-secret needs --webhook-namespace (the Secret's and the Service's namespace)")
    if (service is None) != (configuration is None):
        raise ConfigError("--webhook-service and --webhook-configuration go together: both for a certificate this operator "
                          "issues, neither for one brought in --webhook-secret")
    return RotationSettings(namespace=namespace, secret=secret, cert_dir=cert_dir, service=service, webhook_configuration=configuration)


def respond(review: dict[str, Any], admit: Admit) -> dict[str, Any]:
    """The answer to an AdmissionReview: allowed unless ``admit`` refuses a create or update
    (a delete is never refused; the chart does not even send them). A body that is no
    AdmissionReview raises ``ValueError`` naming the field (the server answers 400)."""
    request = review.get("request") if isinstance(review, dict) else None
    if not isinstance(request, dict):
        raise ValueError("request must be an object")
    for name, kind in (("uid", str), ("operation", str), ("object", dict), ("oldObject", dict)):
        if request.get(name) is not None and not isinstance(request[name], kind):
            raise ValueError(f"request.{name} must be {'a string' if kind is str else 'an object'}")
    answer: dict[str, Any] = {"uid": request.get("uid", ""), "allowed": True}
    operation = request.get("operation")
    if operation in ("CREATE", "UPDATE"):
        try:
            admit(request.get("object") or {}, old=request.get("oldObject") if operation == "UPDATE" else None)
        except kopf.AdmissionError as e:
            answer.update(allowed=False, status={"code": e.code or 422, "message": str(e)})
    return {"apiVersion": review.get("apiVersion", "admission.k8s.io/v1"), "kind": "AdmissionReview", "response": answer}


class AdmissionServer:
    """The HTTPS listener (plain HTTP when ``insecure``: tests only) answering every POST."""

    def __init__(self, admit: Admit, *, addr: str, port: int | None, certfile: str | Path | None, keyfile: str | Path | None,
                 insecure: bool = False) -> None:
        self.admit, self.addr, self.port = admit, addr, port or 0
        self.certfile, self.keyfile = certfile, keyfile
        self.context = None if insecure else ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.runner: aiohttp.web.AppRunner | None = None

    async def start(self) -> int:
        """Load the certificate and listen; returns the port (``port`` None: a free one)."""
        self.reload()
        app = aiohttp.web.Application()
        app.add_routes([aiohttp.web.post("/{path:.*}", self._review)])
        self.runner = aiohttp.web.AppRunner(app, handle_signals=False, access_log=None)
        await self.runner.setup()
        site = aiohttp.web.TCPSite(self.runner, self.addr, self.port, ssl_context=self.context, reuse_address=True)
        await site.start()
        self.port = self.runner.addresses[0][1]
        log.info(f"Admission webhook listening on {self.addr}:{self.port}")
        return self.port

    def reload(self) -> None:
        """Load the certificate files again: connections from now on get the new one."""
        if self.context is not None:
            self.context.load_cert_chain(self.certfile, self.keyfile)

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()

    async def serves_current_certificate(self) -> bool:
        """Readiness: a TLS handshake with this listener presents the certificate in
        ``certfile`` now (what the Secret holds, once ``certrotation`` wrote it)."""
        if self.runner is None:
            return False
        if self.context is None:
            return True
        client = ssl._create_unverified_context()  # this is a check of what is served, not a trust decision
        host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(self.addr, self.addr)
        try:
            _, writer = await asyncio.wait_for(asyncio.open_connection(host, self.port, ssl=client), 2.0)
        except (OSError, ssl.SSLError, TimeoutError):
            return False
        served = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
        writer.close()
        return certs.fingerprint(served) == certs.fingerprint(Path(self.certfile).read_bytes())

    async def _review(self, request: aiohttp.web.Request) -> aiohttp.web.Response:
        try:  # not JSON or UTF-8, nesting too deep, an integer of over 4,300 digits, not a review's shape
            return aiohttp.web.json_response(respond(json.loads(await request.read()), self.admit))
        except (ValueError, RecursionError) as e:
            return aiohttp.web.json_response({"error": f"not an AdmissionReview: {e}"}, status=400)


async def keep_serving(server: AdmissionServer, rotator: CertRotator | None, *, retry_seconds: float = 5.0) -> None:
    """Serve until cancelled: with a rotator, once its first sync has put a certificate in
    place, then loading each one it renews (checked every ``check_seconds``)."""
    started = False
    try:
        if rotator is None:  # files: served as they are
            await server.start()
            await asyncio.Event().wait()
        while True:
            try:
                changed = await asyncio.to_thread(rotator.sync)
            except Exception as e:  # the API server away, a Secret not there yet: try again, keep serving
                log.error(f"Webhook certificate not synced, retrying: {e}")
                changed = False
            if rotator.current is not None and not started:
                await server.start()
                started = True
            elif changed:
                server.reload()
                log.info("Serving the renewed webhook certificate")
            await asyncio.sleep(rotator.settings.check_seconds if started else retry_seconds)
    finally:
        await server.stop()
