"""A draining replica finishes every running request and refuses new ones; /status reports load."""

from __future__ import annotations

import threading

import pytest

from shardwright.workers.serve.config import ServeConfig
from shardwright.workers.serve.server import ReplicaServer
from shardwright.workers.serve.stats import ReplicaStats, Window

from . import http
from .models import engine, generate_alone, prompts, slowed, tiny_config, tiny_model

VOCAB = 260


@pytest.fixture(scope="module")
def model():
    return tiny_model(tiny_config(vocab=VOCAB))


def _server(eng) -> ReplicaServer:
    return ReplicaServer(ServeConfig(model=tiny_config(vocab=VOCAB), model_name="tiny", port=0, pool="p", replica=3), engine=eng)


def test_drain_finishes_running_streams_and_refuses_new_requests(model):
    ps = prompts([6, 14], seed=5, vocab=VOCAB)
    results: dict[int, list] = {}
    with _server(slowed(engine(model), 0.01)) as server:
        def run(i: int) -> None:
            results[i] = http.events(f"{server.url}/v1/completions", {
                "prompt": ps[i], "max_tokens": 30, "temperature": 0, "ignore_eos": True, "return_token_ids": True})

        clients = [threading.Thread(target=run, args=(i,)) for i in range(len(ps))]
        for c in clients:
            c.start()
        while server.engine.scheduler.num_running < len(ps):  # both admitted before the drain
            threading.Event().wait(0.005)
        drained: list[bool] = []
        drainer = threading.Thread(target=lambda: drained.append(server.drain(60)))
        drainer.start()
        while not server.engine_thread.draining:
            threading.Event().wait(0.005)
        status, body = http.post(f"{server.url}/v1/completions", {"prompt": [1], "max_tokens": 1})
        assert status == 503 and body["error"]["code"] == "draining"
        assert http.get(f"{server.url}/health") == (503, {"status": "draining"})
        assert http.get(f"{server.url}/status")[1]["state"] == "draining"
        for c in clients:
            c.join(60)
        drainer.join(60)
    assert drained == [True]
    for i, p in enumerate(ps):  # nothing dropped, nothing cut short
        chunks = results[i][:-1]
        assert [t for c in chunks for t in c["choices"][0]["token_ids"]] == generate_alone(model, p, 30)


def test_status_reports_load_latency_and_throughput(model):
    with _server(engine(model)) as server:
        shared = list(range(50, 70))
        for _ in range(3):
            http.post(f"{server.url}/v1/completions", {"prompt": shared, "max_tokens": 4, "ignore_eos": True})
        status, body = http.get(f"{server.url}/status")
    assert status == 200
    assert body["state"] == "serving" and body["pool"] == "p" and body["replica"] == 3 and body["model"] == "tiny"
    assert body["running"] == 0 and body["waiting"] == 0 and body["kvCacheUsage"] == 0
    assert body["requestsFinished"] == 3
    assert 0 < body["ttftSeconds"]["p50"] <= body["ttftSeconds"]["p99"]
    assert 0 < body["tpotSeconds"]["p50"] <= body["tpotSeconds"]["p99"]
    assert body["tokensPerSecond"] > 0
    assert body["prefixHitRate"] == pytest.approx(2 * 16 / (3 * 20))  # 4 of 5 blocks hit, twice


def test_windows_forget_old_samples_and_give_nearest_rank_percentiles():
    now = [0.0]
    window = Window(seconds=10, clock=lambda: now[0])
    for v in [5.0, 1.0, 3.0, 2.0, 4.0]:
        window.add(v)
    assert (window.percentile(50), window.percentile(99), window.percentile(20)) == (3.0, 5.0, 1.0)
    now[0] = 5.0
    window.add(10.0)
    now[0] = 12.0  # the first five are older than 10 s
    assert window.values() == [10.0] and window.total() == 10.0
    now[0] = 30.0
    assert window.percentile(50) is None


def test_tpot_is_decode_time_over_tokens_after_the_first():
    now = [0.0]
    stats = ReplicaStats(seconds=60, clock=lambda: now[0])
    stats.request_done(first_token=1.0, last_token=3.0, output_tokens=5)
    stats.request_done(first_token=1.0, last_token=1.0, output_tokens=1)  # one token: no TPOT
    now[0] = 4.0
    summary = stats.summary()
    assert summary["tpotSeconds"] == {"p50": 0.5, "p99": 0.5} and summary["requestsFinished"] == 2
