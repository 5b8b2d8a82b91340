"""``shardwright serve`` end to end: replicas as processes behind the router, and no request
fails while a replica is killed mid-stream, while the pool scales down, during a rollout, or
on Ctrl-C.

One ``shardwright serve`` process runs the whole module (replica start-up is the slow part):
a replica is SIGKILLed under a stream and replaced, ``--inject kill`` kills its replacement,
the file is edited to one replica while streams run, then to a new engine (a rollout) while
two clients keep sending, then Ctrl-C drains and stops it.
Every replica iteration sleeps 20 ms (``--inject slow``) so streams are long enough to cut.
"""

from __future__ import annotations

import http.client as httpclient
import json
import os
import signal
import threading

import pytest
import yaml

from . import http
from .serve_process import Clients, serving

N = 40
POOL = {
    "apiVersion": "shardwright.io/v1alpha1", "kind": "ServingPool", "metadata": {"name": "cli-pool"},
    "spec": {
        "model": {"preset": "tiny", "vocabSize": 260, "seed": 3},
        "engine": {"maxBatchTokens": 64, "blockSize": 8, "kvBlocks": 64, "maxModelLen": 256},
        "replicas": 2,
        "router": {"policy": "round-robin", "retries": 2, "requestTimeoutSeconds": 20},
        "rollout": {"maxSurge": 1, "maxUnavailable": 0, "drainTimeoutSeconds": 30},
    },
}


@pytest.fixture(scope="module")
def pool(tmp_path_factory):
    with serving(tmp_path_factory.mktemp("serve"), POOL, ["slow:delay=0.02", "kill:replica=2:after=0.5"], routable=2) as p:
        yield p


def _body(i: int) -> dict:
    prompt = [(7 * i + 3 * k) % 256 for k in range(5 + i)]
    return {"prompt": prompt, "max_tokens": N, "temperature": 0, "ignore_eos": True, "return_token_ids": True}


def _streams(url: str, ids) -> tuple[dict[int, list[int]], list[threading.Thread]]:
    out: dict[int, list[int]] = {}

    def run(i: int) -> None:
        events = http.events(f"{url}/v1/completions", _body(i))  # asserts 200
        assert events[-1] == "[DONE]" and all("error" not in e for e in events[:-1]), events
        out[i] = [t for e in events[:-1] for t in e["choices"][0]["token_ids"]]

    threads = [threading.Thread(target=run, args=(i,)) for i in ids]
    for t in threads:
        t.start()
    return out, threads


def test_a_replica_killed_mid_stream_fails_no_request_and_is_replaced(pool):
    url = pool.url
    status, body = http.post(f"{url}/v1/completions", _body(0))
    assert status == 200
    uninterrupted = body["choices"][0]["token_ids"]
    others, threads = _streams(url, range(1, 5))
    host, port = url.removeprefix("http://").split(":")
    conn = httpclient.HTTPConnection(host, int(port), timeout=60)
    conn.request("POST", "/v1/completions", json.dumps(_body(0) | {"stream": True}), {"Content-Type": "application/json"})
    resp = conn.getresponse()
    assert resp.status == 200
    victim = resp.headers["X-Shardwright-Replica"]
    tokens, killed = [], False
    while line := resp.readline():
        if line.startswith(b"data: {"):
            tokens += json.loads(line[6:])["choices"][0]["token_ids"]
            if len(tokens) >= 5 and not killed:
                os.kill(pool.pids()[victim], signal.SIGKILL)
                killed = True
    conn.close()
    for t in threads:
        t.join(120)
    assert killed and tokens == uninterrupted  # nothing lost, nothing repeated
    assert sorted(others) == [1, 2, 3, 4] and all(len(v) == N for v in others.values())
    # The replacement (replica 2) is killed by --inject half a second after it is routable; a third takes its place.
    pool.wait(lambda: "cli-pool-3" in pool.pids() and pool.status().get("routableReplicas") == 2)
    assert pool.events().count("ReplicaFailed") == 2
    assert victim not in pool.pids() and "cli-pool-2" not in pool.pids()
    assert json.loads(http.request(f"{url}/status")[1])["failed"] == 0


def test_scaling_down_while_streams_run_fails_no_request(pool):
    others, threads = _streams(pool.url, range(6))
    pool.file.write_text(yaml.safe_dump(POOL | {"spec": POOL["spec"] | {"replicas": 1}}))
    for t in threads:
        t.join(120)
    assert sorted(others) == list(range(6)) and all(len(v) == N for v in others.values())
    pool.wait(lambda: pool.status().get("replicas") == 1 and pool.status().get("routableReplicas") == 1)
    assert "ReplicaDraining" in pool.events() and "ReplicaStopped" in pool.events()
    assert json.loads(http.request(f"{pool.url}/status")[1])["failed"] == 0


def test_a_rollout_under_load_replaces_the_replica_and_fails_no_request(pool):
    before = set(pool.pids())
    clients = Clients(pool.url, _body, 2)
    spec = POOL["spec"] | {"replicas": 1, "engine": POOL["spec"]["engine"] | {"maxBatchTokens": 32}}
    pool.file.write_text(yaml.safe_dump(POOL | {"spec": spec}))
    try:
        pool.wait(lambda: "RolloutComplete" in pool.events() and not before & set(pool.pids()))
    finally:
        clients.stop()
    assert clients.errors == [] and clients.tokens and set(clients.tokens) == {N}
    status = pool.status()
    assert status["updatedReplicas"] == 1 and status["routableReplicas"] == 1 and "RolloutStarted" in pool.events()


def test_ctrl_c_drains_the_running_streams_and_stops_every_process(pool):
    pids = list(pool.pids().values())
    others, threads = _streams(pool.url, [7])
    pool.wait(lambda: sum(r["inFlight"] for r in json.loads(http.request(f"{pool.url}/status")[1])["replicas"]) == 1, timeout=30)
    pool.proc.send_signal(signal.SIGINT)
    for t in threads:
        t.join(120)
    assert pool.proc.wait(60) == 0
    assert len(others[7]) == N
    status = pool.status()
    assert status["replicas"] == 0 and status.get("endpoint") is None
    assert [c["reason"] for c in status["conditions"] if c["type"] == "Available"] == ["PoolStopped"]
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
