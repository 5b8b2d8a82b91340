"""Reading the API server's audit log (``ControlPlane.audit_log``): what one service account
asked for and what it was answered, for the RBAC checks of the e2e scenarios."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path


@dataclasses.dataclass(frozen=True, order=True)
class Call:
    """One request, as RBAC sees it: ``resource`` is ``group/resource[/subresource]``
    (the core group is empty)."""

    verb: str
    resource: str
    code: int


def calls(log: Path, username: str, *, since: int = 0, until: int | None = None) -> list[Call]:
    """Requests ``username`` made, between byte offsets ``since`` and ``until`` of the log."""
    out = []
    with log.open("rb") as f:
        f.seek(since)
        for line in f:
            if until is not None and f.tell() > until:
                break
            try:
                event = json.loads(line)
            except ValueError:
                continue  # a line being written
            if event.get("user", {}).get("username") != username or "objectRef" not in event:
                continue
            ref = event["objectRef"]
            resource = f"{ref.get('apiGroup', '')}/{ref.get('resource', '')}" + (f"/{ref['subresource']}" if ref.get("subresource") else "")
            out.append(Call(event["verb"], resource, event.get("responseStatus", {}).get("code", 0)))
    return out


def size(log: Path) -> int:
    """Where the log ends now (read from here on to see only what follows)."""
    return log.stat().st_size if log.exists() else 0


def service_account(namespace: str, name: str) -> str:
    return f"system:serviceaccount:{namespace}:{name}"
