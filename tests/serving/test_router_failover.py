"""Mid-stream failover across processes: SIGKILL the replica serving a stream; the client's
stream goes on from another replica and equals the uninterrupted greedy output."""

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

from shardwright.workers.serve.config import EngineConfig, ServeConfig
from shardwright.workers.serve.router.config import RouterConfig
from shardwright.workers.serve.router.server import REPLICA_HEADER, Router
from shardwright.workers.serve.weights import build_model

from . import http
from .models import generate_alone, prompts, tiny_config

VOCAB = 260
START_TIMEOUT = 120  # torch's import on a busy 2-core machine
SERVE = ServeConfig(model=tiny_config(vocab=VOCAB), model_name="tiny", dtype="float64", seed=7, iteration_delay_s=0.02,
                    engine=EngineConfig(max_model_len=128, num_blocks=64, block_size=4, max_num_batched_tokens=32))


@pytest.fixture(scope="module")
def replica_procs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("replicas")
    procs = {}
    for i in range(2):
        (tmp / f"r{i}.json").write_text(SERVE.model_copy(update={"replica": i, "port_file": str(tmp / f"r{i}.port")}).model_dump_json())
        procs[f"r{i}"] = subprocess.Popen([sys.executable, "-m", "shardwright.workers.serve", "--config", str(tmp / f"r{i}.json")],
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        urls = {}
        deadline = time.monotonic() + START_TIMEOUT
        for name, proc in procs.items():
            port_file = tmp / f"{name}.port"
            while not (port_file.exists() and port_file.read_text()):
                assert proc.poll() is None and time.monotonic() < deadline, f"{name} did not start"
                time.sleep(0.1)
            urls[name] = f"http://127.0.0.1:{port_file.read_text()}"
        yield procs, urls
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=30)


def _reference(p, n):
    return generate_alone(build_model(SERVE.model, seed=SERVE.seed, dtype="float64"), p, n)


def test_killing_the_replica_mid_stream_loses_and_repeats_no_token(replica_procs):
    procs, urls = replica_procs
    ps = prompts([10, 21, 7], seed=9, vocab=VOCAB)
    n = 40
    config = RouterConfig(model_name="tiny", vocab_size=VOCAB, max_model_len=128, block_size=4, policy="round-robin",
                          probe_interval_s=0.05, request_timeout_s=10)
    with Router(config) as router:
        for name, url in urls.items():
            router.register(name, url)
        deadline = time.monotonic() + 30
        while len(router.endpoints.routable()) < 2:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        # Two more streams run beside the one whose replica is killed: none of them may fail.
        others: dict[int, list] = {}
        threads = [threading.Thread(target=lambda i=i: others.__setitem__(i, http.events(f"{router.url}/v1/completions", _body(ps[i], n))))
                   for i in (1, 2)]
        conn = httpclient.HTTPConnection("127.0.0.1", router.httpd.server_address[1], timeout=60)
        conn.request("POST", "/v1/completions", json.dumps(_body(ps[0], n) | {"stream": True}), {"Content-Type": "application/json"})
        resp = conn.getresponse()
        assert resp.status == 200
        victim = resp.headers[REPLICA_HEADER]
        for t in threads:
            t.start()
        tokens, killed = [], False
        while line := resp.readline():
            if not line.startswith(b"data: {"):
                continue
            tokens += json.loads(line[6:])["choices"][0]["token_ids"]
            if len(tokens) >= 5 and not killed:
                os.kill(procs[victim].pid, signal.SIGKILL)
                killed = True
        conn.close()
        for t in threads:
            t.join(120)
        assert killed and len(tokens) == n
        assert tokens == _reference(ps[0], n)
        for i in (1, 2):
            assert [t for e in others[i][:-1] for t in e["choices"][0]["token_ids"]] == _reference(ps[i], n)
        status = router.status()
        assert status["migrations"] >= 1 and status["failed"] == 0
        assert victim not in router.endpoints.routable()


def _body(p, n):
    return {"model": "tiny", "prompt": p, "max_tokens": n, "temperature": 0, "ignore_eos": True, "return_token_ids": True, "stream": True}
