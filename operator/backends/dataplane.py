"""A job's data plane, guarded: its telemetry token, and a NetworkPolicy around its pods.

**Token.** Rank 0's ``/status`` and ``/control`` answer only requests with the job's token
(workers/telemetry.py). It is 32 random bytes in a Secret ``<job>-telemetry`` in the job's
namespace, owned by the TrainingJob (the garbage collector deletes it with the job),
immutable, made once, before the job's first pods. Every pod of the job reads it through
``valueFrom.secretKeyRef`` (``pods.pod_manifest``): the pod spec names the Secret, never the value.
The operator sends it with each probe; it never logs it or writes it into status. Tokens
are remembered by job uid (:data:`TOKENS`), so the Secret is read only by an operator that
restarted while the job ran.

**NetworkPolicy** (``--network-policy``, chart value ``networkPolicy.enabled``): one per
job, ``<job>-ranks``, owned by it. Its pods take traffic from the job's own pods on every
port (rendezvous, collectives, Ray's GCS) and from the peers the chart names (the
operator's pods, a Prometheus) on the telemetry ports only. Namespaces of jobs are not
known when the chart is installed, so the operator renders this one with each job.
"""

from __future__ import annotations

import base64
import collections
import json
import secrets
import threading
from typing import Any

from kubernetes.client.exceptions import ApiException

from . import pods as render
from . import podstatus

#: Tokens remembered at most (least recently used go first; a forgotten one is read again).
REMEMBERED = 10_000


def new_token() -> str:
    """32 random bytes, URL-safe base64 (43 characters)."""
    return secrets.token_urlsafe(32)


def policy_name(owner: render.Owner) -> str:
    return render.child_name(owner, "-ranks")


def _meta(owner: render.Owner, name: str) -> dict[str, Any]:
    return {"name": name, "namespace": owner.namespace, "labels": render.job_labels(owner), "ownerReferences": [owner.reference()]}


def render_secret(owner: render.Owner, token: str) -> dict[str, Any]:
    """The job's token Secret; immutable, so a remembered token never goes stale."""
    return {"apiVersion": "v1", "kind": "Secret", "type": "Opaque", "immutable": True,
            "metadata": _meta(owner, render.token_secret_name(owner)), "data": {render.TOKEN_KEY: base64.b64encode(token.encode()).decode()}}


def token_in(secret: dict[str, Any]) -> str | None:
    """The token a Secret read from the server holds (None when it holds none)."""
    value = (secret.get("data") or {}).get(render.TOKEN_KEY)
    return base64.b64decode(value).decode() if value else None


def render_network_policy(owner: render.Owner, telemetry_port: int, ranks_per_pod: int,
                          peers: list[dict[str, Any]]) -> dict[str, Any]:
    """Ingress to the job's pods: from its own pods on every port, from ``peers`` (each a
    NetworkPolicyPeer) on the telemetry ports, local rank i's at ``telemetry_port + i``."""
    job = {"matchLabels": {render.LABEL_JOB: owner.name}}
    ports: dict[str, Any] = {"protocol": "TCP", "port": telemetry_port}
    if ranks_per_pod > 1:
        ports["endPort"] = telemetry_port + ranks_per_pod - 1
    ingress: list[dict[str, Any]] = [{"from": [{"podSelector": job}]}]
    if peers:  # a rule with no ``from`` would admit every source
        ingress.append({"from": peers, "ports": [ports]})
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": _meta(owner, policy_name(owner)),
            "spec": {"podSelector": job, "policyTypes": ["Ingress"], "ingress": ingress}}


#: The fields of a NetworkPolicyPeer.
PEER_FIELDS = frozenset({"podSelector", "namespaceSelector", "ipBlock"})


def parse_peers(text: str) -> tuple[dict[str, Any], ...]:
    """``--network-policy``'s value: a JSON list of NetworkPolicyPeers (``[]``: the job's
    own pods only). Raises ValueError naming what is wrong; the API server judges the rest."""
    try:
        peers = json.loads(text)
    except ValueError as e:
        raise ValueError(f"--network-policy: not JSON ({e}); expected a list of NetworkPolicyPeers, "
                         f"e.g. [{{\"podSelector\": {{\"matchLabels\": {{\"app\": \"prometheus\"}}}}}}]") from None
    if not isinstance(peers, list):
        raise ValueError(f"--network-policy: expected a JSON list of NetworkPolicyPeers, got {type(peers).__name__}")
    for i, peer in enumerate(peers):
        if not isinstance(peer, dict) or not peer or not set(peer) <= PEER_FIELDS:
            raise ValueError(f"--network-policy[{i}]: a NetworkPolicyPeer is an object with {', '.join(sorted(PEER_FIELDS))}; "
                             f"got {json.dumps(peer)[:200]}")
    return tuple(peers)


def job_token(core: Any, owner: render.Owner) -> str | None:
    """The job's token to send with a probe: remembered, else read from its Secret once (by
    an operator that restarted while the job ran); None where there is none to send."""
    if (token := TOKENS.get(owner.uid)) is None:
        try:
            secret = json.loads(core.read_namespaced_secret(render.token_secret_name(owner), owner.namespace, _preload_content=False).data)
        except ApiException as e:
            if e.status != 404:
                return None  # asked again at the next probe
            secret = {}  # a job started by an older operator: its ranks ask for no token
        except Exception:
            return None
        mine = podstatus.controller_uid(secret.get("metadata") or {}) == owner.uid
        token = (token_in(secret) or "") if mine else ""
        TOKENS.put(owner.uid, token)
    return token or None


class Tokens:
    """Job uid -> token, for every backend pass of this operator process. ``""`` for a job
    whose Secret is missing (one started by an older operator): asked once, not each pass."""

    def __init__(self, size: int = REMEMBERED) -> None:
        self._size = size
        self._tokens: collections.OrderedDict[str, str] = collections.OrderedDict()
        self._lock = threading.Lock()  # reconcile passes run on many threads

    def get(self, uid: str) -> str | None:
        with self._lock:
            if uid in self._tokens:
                self._tokens.move_to_end(uid)
            return self._tokens.get(uid)

    def put(self, uid: str, token: str) -> None:
        with self._lock:
            self._tokens[uid] = token
            self._tokens.move_to_end(uid)
            while len(self._tokens) > self._size:
                self._tokens.popitem(last=False)


#: This process's tokens. Shared by every operator in it (tests run two): a token belongs
#: to a job uid and its Secret is immutable, so whoever learned it first is right.
TOKENS = Tokens()
