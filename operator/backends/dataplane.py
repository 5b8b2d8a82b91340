"""A job's data plane, guarded: its telemetry token, and a NetworkPolicy around its pods.

**Token.** Rank 0's ``/status`` and ``/control`` answer only requests with the job's token
(workers/telemetry.py): HMAC-SHA256 of the job's uid under the operator's key
(``KubernetesSettings.token_key``, kept in a Secret of the operator's own: operator/tokenkey.py).
The operator computes it whenever it probes, so it never reads a Secret of a job back and
its ServiceAccount needs no ``get`` on Secrets in the jobs' namespaces. The ranks read it
from a Secret ``<job>-telemetry-<uid>`` in the job's namespace, owned by the TrainingJob (the
garbage collector deletes it with the job), immutable, made once, before the job's first
pods, through ``valueFrom.secretKeyRef`` (``pods.pod_manifest``): the pod spec names the
Secret, never the value. Its name holds the job's uid, so a 409 on its create means this
job's (an earlier pass, a restarted operator): nothing to read. The operator never logs the
token nor writes it into status; it remembers which jobs' Secrets it made (:data:`MADE`).

**NetworkPolicy** (``--network-policy``, chart value ``networkPolicy.enabled``): one per
job, ``<job>-ranks``, owned by it. Its pods take traffic from the job's own pods on every
port (rendezvous, collectives, Ray's GCS) and from the peers the chart names (the
operator's pods, a Prometheus) on the telemetry ports only. Namespaces of jobs are not
known when the chart is installed, so the operator renders this one with each job.
"""

from __future__ import annotations

import base64
import collections
import hashlib
import hmac
import json
import secrets
import threading
from typing import Any

from . import pods as render

#: Jobs remembered at most (least recently used go first; a forgotten one's create answers 409).
REMEMBERED = 10_000
#: This process's key where none is brought (``shardwright operator`` without
#: ``--token-key-secret``, tests): tokens hold while the process runs.
PROCESS_KEY = secrets.token_bytes(32)


def new_token() -> str:
    """32 random bytes, URL-safe base64 (43 characters)."""
    return secrets.token_urlsafe(32)


def token_for(key: bytes, uid: str) -> str:
    """The telemetry token of the job with ``uid``: HMAC-SHA256 under ``key``, URL-safe
    base64 (43 characters, as :func:`new_token`)."""
    return base64.urlsafe_b64encode(hmac.new(key, uid.encode(), hashlib.sha256).digest()).decode().rstrip("=")


def policy_name(owner: render.Owner) -> str:
    return render.child_name(owner, "-ranks")


def _meta(owner: render.Owner, name: str) -> dict[str, Any]:
    return {"name": name, "namespace": owner.namespace, "labels": render.job_labels(owner), "ownerReferences": [owner.reference()]}


def render_secret(owner: render.Owner, token: str) -> dict[str, Any]:
    """The job's token Secret; immutable, so a remembered token never goes stale."""
    return {"apiVersion": "v1", "kind": "Secret", "type": "Opaque", "immutable": True,
            "metadata": _meta(owner, render.token_secret_name(owner)), "data": {render.TOKEN_KEY: base64.b64encode(token.encode()).decode()}}


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


class Made:
    """Uids of the jobs whose token Secret this operator process made or found, so each is
    created once, not on every generation's start."""

    def __init__(self, size: int = REMEMBERED) -> None:
        self._size = size
        self._uids: collections.OrderedDict[str, None] = collections.OrderedDict()
        self._lock = threading.Lock()  # reconcile passes run on many threads

    def __contains__(self, uid: str) -> bool:
        with self._lock:
            if uid in self._uids:
                self._uids.move_to_end(uid)
                return True
            return False

    def add(self, uid: str) -> None:
        with self._lock:
            self._uids[uid] = None
            self._uids.move_to_end(uid)
            while len(self._uids) > self._size:
                self._uids.popitem(last=False)


#: This process's jobs with a token Secret, shared by every operator in it (tests run two).
MADE = Made()
