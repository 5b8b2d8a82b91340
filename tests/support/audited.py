"""An identity the API server's audit log records, and what it asked for.

The local control plane audits service accounts only (``controlplane.AUDIT_POLICY``), so an
operator whose requests are to be counted or read runs as one: :func:`service_account`
makes a ServiceAccount bound to ``cluster-admin`` and writes a kubeconfig with its token.
:func:`requests` reads back every request it made, with the request URI (selectors,
timeouts and resourceVersion are query parameters there).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from e2e.cluster import audit
from e2e.cluster.controlplane import ControlPlane


@dataclasses.dataclass(frozen=True)
class Request:
    """One request as the audit log shows it (``resource[/subresource]``, without its API group)."""

    verb: str
    resource: str
    uri: str
    code: int


def service_account(cp: ControlPlane, namespace: str, name: str, kubeconfig: Path) -> str:
    """A ServiceAccount ``namespace/name`` with cluster-admin (made if missing, with its
    namespace) and ``kubeconfig`` holding a token for it (an hour); returns its user name.
    The binding is named after the account: :func:`remove` deletes it."""
    if cp.kubectl("get", "namespace", namespace, check=False).returncode != 0:
        cp.kubectl("create", "namespace", namespace)
    if cp.kubectl("-n", namespace, "get", "serviceaccount", name, check=False).returncode != 0:
        cp.kubectl("-n", namespace, "create", "serviceaccount", name)
    cp.kubectl("create", "clusterrolebinding", _binding(namespace, name), "--clusterrole=cluster-admin",
               f"--serviceaccount={namespace}:{name}", check=False)
    token = cp.kubectl("-n", namespace, "create", "token", name, "--duration=1h").stdout.strip()
    config = json.loads(cp.kubeconfig.read_text())
    config["users"] = [{"name": "admin", "user": {"token": token}}]
    kubeconfig.write_text(json.dumps(config))
    kubeconfig.chmod(0o600)
    return audit.service_account(namespace, name)


def remove(cp: ControlPlane, namespace: str, name: str) -> None:
    """Delete what :func:`service_account` made cluster-wide (the namespace stays)."""
    cp.kubectl("delete", "clusterrolebinding", _binding(namespace, name), "--wait=false", check=False)


def _binding(namespace: str, name: str) -> str:
    return f"audited-{namespace}-{name}"


def requests(log: Path, username: str, *, since: int = 0) -> list[Request]:
    """Every request ``username`` made after byte ``since`` of the log, once each (a watch
    is logged when it starts and again when it ends; the audit ID joins them)."""
    seen: dict[str, Request] = {}
    with log.open("rb") as f:
        f.seek(since)
        for line in f:
            try:
                event = json.loads(line)
            except ValueError:
                continue  # a line being written
            if event.get("user", {}).get("username") != username or event.get("auditID") in seen:
                continue
            ref = event.get("objectRef") or {}
            resource = ref.get("resource", "") + (f"/{ref['subresource']}" if ref.get("subresource") else "")
            seen[event["auditID"]] = Request(event["verb"], resource, event.get("requestURI", ""),
                                             event.get("responseStatus", {}).get("code", 0))
    return list(seen.values())
