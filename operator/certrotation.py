"""Keeping the webhook's certificate in its Secret current, on every operator replica.

Each replica, leader or not, runs one ``CertRotator``: at start-up and then every
``check_seconds`` it reads the Secret (the chart creates it empty and never writes its data,
so no render or sync changes it), issues a CA and serving certificate into it when they are
missing or about to expire, sets the CA as the ``caBundle`` of the ValidatingWebhookConfiguration,
and writes ``tls.crt``/``tls.key`` where the webhook server loads them from. Two replicas
starting at once do not fight: the Secret is replaced with the ``resourceVersion`` it was
read at, so one write wins, the other gets a 409, reads again and takes the winner's
certificate. Where a certificate is brought (cert-manager, ``webhook.certSecret``) the
rotator only reads: it never writes the Secret nor the ``caBundle``.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime
import json
import logging
import os
from collections.abc import Callable
from pathlib import Path

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from shardwright.operator import certs

log = logging.getLogger(__name__)
#: Tries of one read-modify-write before the sync is left to the next check.
CONFLICT_TRIES = 5


class CertError(Exception):
    """The certificate cannot be served (no Secret, nothing in it, no permission)."""


@dataclasses.dataclass(frozen=True)
class RotationSettings:
    """Where the certificate lives and what this replica may do with it."""

    #: The Secret with ``tls.crt``/``tls.key`` (and ``ca.crt``/``ca.key`` when self-signed).
    namespace: str
    secret: str
    #: Folder the webhook server loads ``tls.crt``/``tls.key`` from (a writable emptyDir).
    cert_dir: Path
    #: Self-signed: the Service whose DNS names the certificate carries, and the
    #: ValidatingWebhookConfiguration that gets the CA. None for both: the certificate is
    #: brought (cert-manager) and only read.
    service: str | None = None
    webhook_configuration: str | None = None
    #: Seconds between re-reads of the Secret: a renewal by another replica or by
    #: cert-manager is served within this; one GET per replica each time.
    check_seconds: float = 60.0

    @property
    def self_signed(self) -> bool:
        return self.service is not None


class CertRotator:
    """One replica's view of the webhook certificate; ``sync`` is blocking (a thread)."""

    def __init__(self, api: client.ApiClient, settings: RotationSettings,
                 clock: Callable[[], datetime.datetime] = lambda: datetime.datetime.now(datetime.timezone.utc)) -> None:
        self.core = client.CoreV1Api(api)
        self.admission = client.AdmissionregistrationV1Api(api)
        self.settings = settings
        self.clock = clock
        #: The certificate last written to ``cert_dir`` (what the server should present).
        self.current: certs.Bundle | None = None

    @property
    def certfile(self) -> Path:
        return self.settings.cert_dir / "tls.crt"

    @property
    def keyfile(self) -> Path:
        return self.settings.cert_dir / "tls.key"

    def sync(self) -> bool:
        """Ensure the Secret holds a good certificate, the ``caBundle`` its CA and the files
        it; True when the files changed (the server must load them)."""
        bundle = self._ensure_secret()
        if self.settings.webhook_configuration is not None:
            self._inject(bundle.ca_cert)
        if bundle == self.current:
            return False
        self.settings.cert_dir.mkdir(parents=True, exist_ok=True)
        _write(self.keyfile, bundle.key)  # the key first: a reader pairs a new cert with its key
        _write(self.certfile, bundle.cert)
        self.current = bundle
        return True

    def _ensure_secret(self) -> certs.Bundle:
        s = self.settings
        names = certs.service_names(s.service, s.namespace) if s.service else ()
        for _ in range(CONFLICT_TRIES):
            secret = self._read_secret()
            bundle = certs.from_data(secret.get("data"))
            why = certs.problem(bundle, names, self.clock(), signs=s.self_signed)
            if why is None:
                return bundle
            if not s.self_signed:
                if bundle is None:
                    raise CertError(f"Secret {s.namespace}/{s.secret} has no tls.crt and tls.key yet (the certificate is brought: "
                                    "cert-manager or webhook.certSecret)")
                log.warning(f"Serving the brought certificate in Secret {s.namespace}/{s.secret} as it is: {why}")
                return bundle
            fresh = certs.issue(names, self.clock(), bundle)
            secret["data"] = {**(secret.get("data") or {}), **certs.to_data(fresh)}
            try:  # the body carries the resourceVersion read: a write in between is a 409
                self.core.replace_namespaced_secret(s.secret, s.namespace, secret)
            except ApiException as e:
                if e.status == 409:
                    continue  # another replica wrote first: read its certificate
                raise CertError(f"cannot write Secret {s.namespace}/{s.secret}: {e.status} {e.reason}") from e
            log.info(f"Issued the webhook certificate into Secret {s.namespace}/{s.secret} ({why})")
            return fresh
        raise CertError(f"Secret {s.namespace}/{s.secret} kept changing under {CONFLICT_TRIES} writes")

    def _read_secret(self) -> dict:
        s = self.settings
        try:
            return json.loads(self.core.read_namespaced_secret(s.secret, s.namespace, _preload_content=False).data)
        except ApiException as e:
            raise CertError(f"cannot read Secret {s.namespace}/{s.secret}: {e.status} {e.reason}"
                            + (" (the chart creates it)" if e.status == 404 else "")) from e

    def _inject(self, ca: bytes) -> None:
        """Set every webhook's ``caBundle`` to ``ca``; a JSON patch that first tests the
        ``resourceVersion`` read, so an edit in between is never overwritten."""
        name = self.settings.webhook_configuration
        want = base64.b64encode(ca).decode()
        for _ in range(CONFLICT_TRIES):
            try:
                config = json.loads(self.admission.read_validating_webhook_configuration(name, _preload_content=False).data)
            except ApiException as e:
                raise CertError(f"cannot read ValidatingWebhookConfiguration {name}: {e.status} {e.reason}") from e
            ops = [{"op": "add", "path": f"/webhooks/{i}/clientConfig/caBundle", "value": want}
                   for i, hook in enumerate(config.get("webhooks") or []) if hook.get("clientConfig", {}).get("caBundle") != want]
            if not ops:
                return
            test = {"op": "test", "path": "/metadata/resourceVersion", "value": config["metadata"]["resourceVersion"]}
            try:
                self.admission.patch_validating_webhook_configuration(name, [test, *ops])
            except ApiException as e:
                if e.status in (409, 422):  # 422: the test failed, someone wrote in between
                    continue
                raise CertError(f"cannot patch ValidatingWebhookConfiguration {name}: {e.status} {e.reason}") from e
            log.info(f"Set the caBundle of ValidatingWebhookConfiguration {name}")
            return
        raise CertError(f"ValidatingWebhookConfiguration {name} kept changing under {CONFLICT_TRIES} patches")


def _write(path: Path, data: bytes) -> None:
    """Replace ``path`` at once (a reader never sees half a file), readable by us only."""
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)
