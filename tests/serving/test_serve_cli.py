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
import subprocess
import sys
import threading
import time

import pytest
import yaml

from . import http

START_TIMEOUT = 150  # two or three torch imports on a busy 2-core machine
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


class Pool:
    def __init__(self, tmp) -> None:
        self.file, self.workdir = tmp / "pool.yaml", tmp / "wd"
        self.file.write_text(yaml.safe_dump(POOL))
        self.log = (tmp / "serve.log").open("w")
        self.proc = subprocess.Popen(
            [sys.executable, "-c", "import sys; from shardwright.operator.cli import main; sys.exit(main())", "serve", str(self.file),
             "--port", "0", "--workdir", str(self.workdir), "--inject", "slow:delay=0.02",
             "--inject", "kill:replica=2:after=0.5"],
            stdout=self.log, stderr=subprocess.STDOUT)

    def status(self) -> dict:
        try:
            return json.loads((self.workdir / "status.json").read_text())
        except (OSError, ValueError):
            return {}

    def pids(self) -> dict[str, int]:
        rows = json.loads((self.workdir / "replicas.json").read_text())["replicas"]
        return {r["name"]: r["pid"] for r in rows}

    def events(self) -> list[str]:
        return [json.loads(line)["reason"] for line in (self.workdir / "events.jsonl").read_text().splitlines()]

    def wait(self, what, timeout: float = START_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while not what():
            assert self.proc.poll() is None, (self.workdir.parent / "serve.log").read_text()
            assert time.monotonic() < deadline, f"not reached; status {self.status()}"
            time.sleep(0.1)

    @property
    def url(self) -> str:
        return self.status()["endpoint"]


@pytest.fixture(scope="module")
def pool(tmp_path_factory):
    p = Pool(tmp_path_factory.mktemp("serve"))
    try:
        p.wait(lambda: p.status().get("routableReplicas") == 2)
        yield p
    finally:
        if p.proc.poll() is None:
            p.proc.kill()
            p.proc.wait(30)
        for pid in _replica_pids(p):
            _kill(pid)
        p.log.close()


def _replica_pids(p: Pool) -> list[int]:
    try:
        return list(p.pids().values())
    except (OSError, ValueError, KeyError):
        return []


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


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
    done, results, errors = threading.Event(), [], []

    def client(i: int) -> None:
        while not done.is_set():
            try:
                events = http.events(f"{pool.url}/v1/completions", _body(i))
                results.append(len([t for e in events[:-1] for t in e["choices"][0].get("token_ids", [])]))
            except AssertionError as e:  # a non-200 answer
                errors.append(str(e))

    clients = [threading.Thread(target=client, args=(i,)) for i in (1, 2)]
    for c in clients:
        c.start()
    spec = POOL["spec"] | {"replicas": 1, "engine": POOL["spec"]["engine"] | {"maxBatchTokens": 32}}
    pool.file.write_text(yaml.safe_dump(POOL | {"spec": spec}))
    try:
        pool.wait(lambda: "RolloutComplete" in pool.events() and not before & set(pool.pids()), timeout=START_TIMEOUT)
    finally:
        done.set()
        for c in clients:
            c.join(120)
    assert errors == [] and results and set(results) == {N}
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
