"""The admission webhook's certificate at start-up: served, off, or one clear error line.

Read once by ``shardwright operator`` (cli.py) before Kopf starts; the handlers only take
the outcome (``OperatorConfig.webhook`` and its files).
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


class ConfigError(Exception):
    """A start-up setting that cannot work; the CLI prints it as one line and exits 2."""


def tls_files(cert_dir: Path, mode: str) -> tuple[str, str] | None:
    """The webhook's (certificate, key) files in ``cert_dir``, or None to serve no webhook.

    ``mode`` ``on`` needs both files (in a cluster the chart mounts its Secret there);
    ``auto`` serves the webhook only when they exist: a laptop with a kubeconfig runs the
    operator without one (the API server could not call it there anyway)."""
    cert, key = cert_dir / "tls.crt", cert_dir / "tls.key"
    present = cert.is_file() and key.is_file()
    if mode == "off" or (mode == "auto" and not present):
        if mode == "auto":
            log.info(f"Admission webhook off: no tls.crt and tls.key in {cert_dir} (--webhook-cert-dir); "
                     "objects are still checked by the CRD schema and by every reconcile")
        return None
    if not present:
        missing = " and ".join(str(p) for p in (cert, key) if not p.is_file())
        raise ConfigError(f"webhook certificate not found: {missing}; mount the chart's Secret there, "
                          "pass --webhook-cert-dir, or --webhook=off")
    return str(cert), str(key)


async def no_webhook(_fn: Any):
    """An admission 'server' that never serves: Kopf requires one when validating handlers exist."""
    await asyncio.Event().wait()
    yield  # pragma: no cover - never reached; makes this an async generator
