"""The key of every job's telemetry token (backends/dataplane.py), kept in one Secret of the
operator's own so every replica, and a restarted operator, computes the same tokens.

Read at start-up; made by the first replica that finds none (32 random bytes, immutable).
Two replicas starting at once do not fight: the loser's create answers 409 and it reads the
winner's. The chart grants ``get`` on this Secret by name and ``create`` (which cannot be
limited to a name) in the operator's namespace, nothing else on Secrets there, so the
operator never needs to read a Secret it did not make. The Secret is not the chart's: it
outlives ``helm uninstall``, as the jobs (and their tokens) may. Deleting it gives the next
operator a new key; the probes of jobs already running are then refused until they end.
"""

from __future__ import annotations

import base64
import json
import secrets
from typing import Any

from kubernetes.client.exceptions import ApiException

#: The key's entry in the Secret's data.
KEY = "key"
#: Reads and creates tried before giving up (each 404 on read is followed by a create).
TRIES = 3


class TokenKeyError(Exception):
    """The key cannot be had: no permission, or the API server refused it."""


def parse(value: str) -> tuple[str, str]:
    """``--token-key-secret``'s ``NAMESPACE/NAME``; ValueError naming the form otherwise."""
    namespace, _, name = value.partition("/")
    if not namespace or not name or "/" in name:
        raise ValueError(f"--token-key-secret: expected NAMESPACE/NAME (e.g. shardwright-system/shardwright-token-key), got {value!r}")
    return namespace, name


def ensure(core: Any, namespace: str, name: str) -> bytes:
    """The key in Secret ``namespace/name``, made there first when there is none."""
    for _ in range(TRIES):
        try:
            secret = json.loads(core.read_namespaced_secret(name, namespace, _preload_content=False).data)
        except ApiException as e:
            if e.status != 404:
                raise TokenKeyError(f"cannot read Secret {namespace}/{name}: {e.status} {e.reason}") from None
        except Exception as e:  # the API server away: the pod restarts and tries again
            raise TokenKeyError(f"cannot read Secret {namespace}/{name}: {e}") from None
        else:
            if value := (secret.get("data") or {}).get(KEY):
                return base64.b64decode(value)
            raise TokenKeyError(f"Secret {namespace}/{name} has no {KEY!r} entry: delete it and the operator makes a new one")
        key = secrets.token_bytes(32)
        body = {"apiVersion": "v1", "kind": "Secret", "type": "Opaque", "immutable": True,
                "metadata": {"name": name, "namespace": namespace, "labels": {"app.kubernetes.io/part-of": "shardwright"}},
                "data": {KEY: base64.b64encode(key).decode()}}
        try:
            core.create_namespaced_secret(namespace, body, _preload_content=False)
            return key
        except ApiException as e:
            if e.status != 409:  # 409: another replica made it first: read theirs
                raise TokenKeyError(f"cannot create Secret {namespace}/{name}: {e.status} {e.reason}") from None
        except Exception as e:
            raise TokenKeyError(f"cannot create Secret {namespace}/{name}: {e}") from None
    raise TokenKeyError(f"Secret {namespace}/{name} came and went {TRIES} times")
