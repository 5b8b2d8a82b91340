"""The router in front of in-process replicas: outputs equal the prompt generated alone,
routability, retries, timeouts instead of hangs, and mid-stream migration."""

from __future__ import annotations

import json
import threading

import pytest

from shardwright.workers.serve.config import ServeConfig
from shardwright.workers.serve.router.config import RouterConfig
from shardwright.workers.serve.router.server import REPLICA_HEADER, Router
from shardwright.workers.serve.server import ReplicaServer
from shardwright.workers.serve.tokenizer import ByteTokenizer

from . import fakes, http
from .models import engine, generate_alone, prompts, tiny_config, tiny_model

VOCAB = 260
MODEL = "tiny"
CONFIG = RouterConfig(model_name=MODEL, vocab_size=VOCAB, max_model_len=96, block_size=4, probe_interval_s=0.05, request_timeout_s=5, hold_s=5)


@pytest.fixture(scope="module")
def model():
    return tiny_model(tiny_config(vocab=VOCAB))


@pytest.fixture(scope="module")
def replicas(model):
    servers = [ReplicaServer(ServeConfig(model=tiny_config(vocab=VOCAB), model_name=MODEL, replica=i),
                             engine=engine(model, max_model_len=96, max_num_batched_tokens=8)).start() for i in range(2)]
    yield servers
    for s in servers:
        s.stop()


def _router(replicas, **kw) -> Router:
    router = Router(CONFIG.model_copy(update=kw)).start()
    for i, r in enumerate(replicas):
        router.register(f"r{i}", r.url)
    _wait(lambda: len(router.endpoints.routable()) == len(replicas))
    return router


def _wait(cond, timeout: float = 20) -> None:
    done = threading.Event()
    for _ in range(int(timeout / 0.02)):
        if cond():
            return
        done.wait(0.02)
    raise AssertionError("condition not reached")


def _greedy(p, n, **kw):
    return {"model": MODEL, "prompt": p, "max_tokens": n, "temperature": 0, "ignore_eos": True, "return_token_ids": True} | kw


def _streamed(events) -> list[int]:
    assert events[-1] == "[DONE]"
    return [t for e in events[:-1] for c in e["choices"] for t in c.get("token_ids", [])]


@pytest.mark.parametrize("policy", ["prefix-aware", "least-load", "round-robin"])
def test_outputs_through_the_router_equal_alone(replicas, model, policy):
    router = _router(replicas, policy=policy)
    try:
        ps = prompts([5, 17, 30], seed=11, vocab=VOCAB)
        results = {}

        def run(i):
            results[i] = http.events(f"{router.url}/v1/completions", _greedy(ps[i], 12))

        threads = [threading.Thread(target=run, args=(i,)) for i in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        for i, p in enumerate(ps):
            assert _streamed(results[i]) == generate_alone(model, p, 12)
        status, body = http.post(f"{router.url}/v1/completions", _greedy(ps[0], 6))
        assert status == 200 and body["choices"][0]["token_ids"] == generate_alone(model, ps[0], 6)
        tok = ByteTokenizer(VOCAB)
        status, body = http.post(f"{router.url}/v1/chat/completions", {"model": MODEL, "messages": [{"role": "user", "content": "hi"}],
                                                                       "max_tokens": 5, "temperature": 0, "ignore_eos": True})
        want = tok.decode(generate_alone(model, tok.encode(tok.apply_chat_template([{"role": "user", "content": "hi"}])), 5))
        assert status == 200 and body["choices"][0]["message"]["content"] == want
        assert router.status()["failed"] == 0
    finally:
        router.stop()


def test_bad_requests_get_4xx_and_the_router_keeps_serving(replicas, model):
    with _router(replicas) as router:
        assert http.post(f"{router.url}/v1/completions", b"{nope")[0] == 400
        status, body = http.post(f"{router.url}/v1/completions", {"model": "other", "prompt": [1]})
        assert status == 404 and body["error"]["code"] == "model_not_found"
        status, body = http.post(f"{router.url}/v1/completions", {"prompt": [1] * 96})
        assert status == 400 and body["error"]["code"] == "context_length_exceeded"
        assert http.post(f"{router.url}/v1/completions", _greedy([3, 4], 4))[0] == 200


def test_a_registered_replica_is_routable_only_once_probed_serving_and_not_after_route_away(replicas):
    probed = threading.Event()
    router = Router(CONFIG)
    real_probe = router.endpoints._probe
    router.endpoints._probe = lambda url, t: real_probe(url, t) if probed.is_set() else None  # "started", not answering yet
    with router:
        router.register("r0", replicas[0].url)
        threading.Event().wait(0.2)
        assert router.endpoints.routable() == []
        assert http.get(f"{router.url}/health")[0] == 503
        probed.set()
        _wait(lambda: router.endpoints.routable() == ["r0"])
        router.register("r1", replicas[1].url)
        _wait(lambda: router.endpoints.routable() == ["r0", "r1"])
        router.route_away("r0")
        assert router.endpoints.routable() == ["r1"]
        for _ in range(4):
            assert http.request(f"{router.url}/v1/completions", "POST", _greedy([1, 2], 2))[0] == 200
        assert {e["name"]: e["inFlight"] for e in router.status()["replicas"]} == {"r0": 0, "r1": 0}


def test_a_replica_that_stops_answering_times_out_and_the_request_goes_elsewhere(replicas, model):
    p = prompts([9], seed=4, vocab=VOCAB)[0]
    with fakes.FakeReplica(fakes.hang) as hung, Router(CONFIG.model_copy(update={"request_timeout_s": 2, "policy": "round-robin"})) as router:
        router.register("a-hung", hung.url)
        _wait(lambda: router.endpoints.routable() == ["a-hung"])
        status, body = http.post(f"{router.url}/v1/completions", _greedy(p, 4))
        assert status == 502 and "gave up" in body["error"]["message"]  # an answer, not a hang
        router.register("b-real", replicas[0].url)
        _wait(lambda: "b-real" in router.endpoints.routable() and "a-hung" in router.endpoints.routable())
        status, body = http.post(f"{router.url}/v1/completions", _greedy(p, 4))  # whichever it tries first
        assert status == 200 and body["choices"][0]["token_ids"] == generate_alone(model, p, 4)
        assert router.status()["retries"] >= 1 and router.status()["failed"] == 1


@pytest.mark.parametrize("stream", [True, False])
def test_a_stream_cut_mid_way_continues_on_another_replica_with_no_token_lost_or_repeated(replicas, model, stream):
    p = prompts([13], seed=8, vocab=VOCAB)[0]
    want = generate_alone(model, p, 24)
    with fakes.FakeReplica(fakes.dies_after(5, replicas[0].url)) as dying, Router(CONFIG.model_copy(update={"policy": "round-robin"})) as router:
        router.register("a-dying", dying.url)
        router.register("b-real", replicas[1].url)
        _wait(lambda: router.endpoints.routable() == ["a-dying", "b-real"])
        tok = ByteTokenizer(VOCAB)
        body = _greedy(p, 24)
        if stream:
            events = http.events(f"{router.url}/v1/completions", body)
            assert _streamed(events) == want
            assert "".join(e["choices"][0]["text"] for e in events[:-1]) == tok.decode(want)
            assert events[-2]["choices"][0]["finish_reason"] == "length"
        else:
            status, out = http.post(f"{router.url}/v1/completions", body)
            assert status == 200 and out["choices"][0]["token_ids"] == want and out["choices"][0]["text"] == tok.decode(want)
        assert dying.posts == 1
        assert router.status()["migrations"] == 1 and router.status()["failed"] == 0


def test_the_serving_replica_is_named_in_a_header(replicas):
    import urllib.request

    with _router(replicas[:1]) as router:
        req = urllib.request.Request(f"{router.url}/v1/completions", data=b'{"prompt": [1, 2], "max_tokens": 2}', method="POST")
        with urllib.request.urlopen(req, timeout=30) as resp:
            assert resp.headers[REPLICA_HEADER] == "r0"


def test_a_new_router_spec_applies_to_the_requests_that_follow(replicas, model):
    with _router(replicas, policy="round-robin") as router:
        port = router.url
        router.reconfigure(CONFIG.model_copy(update={"policy": "least-load", "retries": 0, "port": 1}))
        assert router.url == port and router.status()["policy"] == "least-load" and router.config.retries == 0
        p = prompts([6], seed=2, vocab=VOCAB)[0]
        status, body = http.post(f"{router.url}/v1/completions", _greedy(p, 5))
        assert status == 200 and body["choices"][0]["token_ids"] == generate_alone(model, p, 5)


def test_a_request_is_held_while_no_replica_is_routable_and_served_once_one_is(replicas, model):
    p = prompts([7], seed=6, vocab=VOCAB)[0]
    with Router(CONFIG) as router:
        out = []
        client = threading.Thread(target=lambda: out.append(http.post(f"{router.url}/v1/completions", _greedy(p, 4))))
        client.start()
        _wait(lambda: router.status()["held"] == 1)  # what wakes a pool at zero
        router.register("r0", replicas[0].url)
        client.join(30)
        assert out[0][0] == 200 and out[0][1]["choices"][0]["token_ids"] == generate_alone(model, p, 4)
        assert router.status()["held"] == 0


def test_prefix_aware_routing_keeps_a_shared_prefix_on_one_replica(replicas):
    import urllib.request

    def served_by(router, prompt) -> str:
        req = urllib.request.Request(f"{router.url}/v1/completions", data=json.dumps(_greedy(prompt, 2)).encode(), method="POST")
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.headers[REPLICA_HEADER]

    shared = prompts([16], seed=12, vocab=VOCAB)[0]
    with _router(replicas, policy="prefix-aware") as router:
        assert len({served_by(router, shared + [i]) for i in range(4)}) == 1
    with _router(replicas, policy="round-robin") as router:
        assert len({served_by(router, shared + [i]) for i in range(4)}) == 2
