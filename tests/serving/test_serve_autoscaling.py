"""``shardwright serve`` with autoscaling on queue depth: a burst of clients scales the pool
from one replica to two, the pool goes back to one once idle, and no request fails.

Each replica decodes at most 2 requests at once and every iteration sleeps 50 ms (``--inject
slow``), so 8 clients that keep sending leave requests waiting: on one replica 6 waiting
(target 1 per replica: 2 wanted, the maximum); on two, 2 waiting each (still 2). Once the
clients stop, nothing waits: one replica is enough, and after the 2 s stabilisation window the
pool retires the other (route away, drain, stop). The output goes into a pipe (a log file):
the live table printed as plain lines.
"""

from __future__ import annotations

import json

import pytest

from . import http
from .serve_process import Clients, ServeProcess, serving

pytestmark = pytest.mark.slow

N = 24
POOL = {
    "apiVersion": "shardwright.io/v1alpha1", "kind": "ServingPool", "metadata": {"name": "auto-pool"},
    "spec": {
        "model": {"preset": "tiny", "vocabSize": 260, "seed": 3},
        "engine": {"maxBatchTokens": 64, "maxRunningRequests": 2, "blockSize": 8, "kvBlocks": 64, "maxModelLen": 256},
        "replicas": 1,
        "roles": [{"name": "unified", "minReplicas": 1, "maxReplicas": 2}],
        "router": {"policy": "least-load", "retries": 2, "requestTimeoutSeconds": 20},
        "autoscaling": {"signal": "queue-depth", "target": 1, "scaleDownStabilizationSeconds": 2},
        "rollout": {"maxSurge": 1, "maxUnavailable": 0, "drainTimeoutSeconds": 30},
    },
}


@pytest.fixture
def pool(tmp_path):
    with serving(tmp_path, POOL, ["slow:delay=0.05"], routable=1) as p:
        yield p


def _body(i: int) -> dict:
    return {"prompt": [(5 * i + k) % 256 for k in range(6)], "max_tokens": N, "temperature": 0, "ignore_eos": True, "return_token_ids": True}


def _in_flight(pool: ServeProcess, name: str) -> int:
    rows = json.loads(http.request(f"{pool.url}/status")[1])["replicas"]
    return sum(r["inFlight"] for r in rows if r["name"] == name)


def test_a_burst_scales_the_pool_up_and_idleness_back_down_with_no_request_failed(pool):
    clients = Clients(pool.url, _body, 8)
    try:
        pool.wait(lambda: pool.status().get("routableReplicas") == 2)
        pool.wait(lambda: _in_flight(pool, "auto-pool-1") > 0, timeout=30)  # the new replica takes part of the burst
    finally:
        clients.stop()
    pool.wait(lambda: pool.status().get("replicas") == 1 and "ScaledDown" in pool.events(), timeout=60)
    assert clients.errors == [] and clients.tokens and set(clients.tokens) == {N}
    events = pool.events()
    assert events.index("ScaledUp") < events.index("ScaledDown") and "ReplicaStopped" in events and "ReplicaFailed" not in events
    assert json.loads(http.request(f"{pool.url}/status")[1])["failed"] == 0
    log = pool.log_path.read_text()
    assert "\x1b" not in log and "REPLICA  STATE" in log and "auto-pool-1  Routable" in log
