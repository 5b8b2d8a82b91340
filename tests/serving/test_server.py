"""The OpenAI-compatible HTTP server of one replica, in this process on a free port.

Outputs over HTTP are compared with the same prompt generated alone by the model
(``Transformer.forward`` on the whole sequence each step), token for token and as text.
"""

from __future__ import annotations

import socket
import threading
import time

import pytest

from shardwright.workers.serve.config import ServeConfig
from shardwright.workers.serve.server import ReplicaServer
from shardwright.workers.serve.tokenizer import ByteTokenizer

from . import http
from .models import engine, generate_alone, prompts, slowed, tiny_config, tiny_model

VOCAB = 260  # the 256 byte tokens, end-of-sequence (256) and a few more
MAX_MODEL_LEN = 96
MODEL = "tiny"


@pytest.fixture(scope="module")
def model():
    return tiny_model(tiny_config(vocab=VOCAB))


@pytest.fixture(scope="module")
def server(model):
    config = ServeConfig(model=tiny_config(vocab=VOCAB), model_name=MODEL, port=0)
    with ReplicaServer(config, engine=engine(model, max_model_len=MAX_MODEL_LEN, max_num_batched_tokens=8)) as s:
        yield s


def _text(model, prompt: str, n: int) -> str:
    tok = ByteTokenizer(VOCAB)
    return tok.decode(generate_alone(model, tok.encode(prompt), n))


def test_completion_of_token_ids_equals_alone(server, model):
    p = prompts([11], vocab=VOCAB)[0]
    status, body = http.post(f"{server.url}/v1/completions", {
        "model": MODEL, "prompt": p, "max_tokens": 8, "temperature": 0, "ignore_eos": True, "return_token_ids": True})
    assert status == 200, body
    choice = body["choices"][0]
    assert choice["token_ids"] == generate_alone(model, p, 8)
    assert choice["prompt_token_ids"] == p and choice["finish_reason"] == "length"
    assert body["object"] == "text_completion" and body["model"] == MODEL
    assert body["usage"] | {"prompt_tokens_details": None} == {"prompt_tokens": 11, "completion_tokens": 8, "total_tokens": 19, "prompt_tokens_details": None}


def test_concurrent_streams_equal_alone(server, model):
    ps = prompts([5, 13, 29, 40], seed=3, vocab=VOCAB)
    results: dict[int, list] = {}

    def run(i: int) -> None:
        results[i] = http.events(f"{server.url}/v1/completions", {
            "prompt": ps[i], "max_tokens": 9, "temperature": 0, "ignore_eos": True, "return_token_ids": True})

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(ps))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    for i, p in enumerate(ps):
        evs = results[i]
        assert evs[-1] == "[DONE]"
        chunks = evs[:-1]
        assert [tok for c in chunks for tok in c["choices"][0]["token_ids"]] == generate_alone(model, p, 9)
        assert [c["choices"][0]["finish_reason"] for c in chunks][-1] == "length"
        assert all(c["choices"][0]["finish_reason"] is None for c in chunks[:-1])


def test_text_completion_streamed_and_not_with_a_stop_string(server, model):
    full = _text(model, "The pool", 24)
    stop = full[6:8]
    expected = full[: full.find(stop)]
    body = {"prompt": "The pool", "max_tokens": 24, "temperature": 0, "ignore_eos": True, "stop": [stop]}
    status, resp = http.post(f"{server.url}/v1/completions", body)
    assert status == 200, resp
    assert resp["choices"][0]["text"] == expected and resp["choices"][0]["finish_reason"] == "stop"
    chunks = http.events(f"{server.url}/v1/completions", body)[:-1]
    assert "".join(c["choices"][0]["text"] for c in chunks) == expected
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"


def test_chat_completion_streamed_and_not(server, model):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": [{"type": "text", "text": "Hi"}]}]
    layout = "<|system|>\nBe brief.\n<|user|>\nHi\n<|assistant|>\n"
    expected = _text(model, layout, 12)
    body = {"model": MODEL, "messages": messages, "max_tokens": 12, "temperature": 0, "ignore_eos": True}
    status, resp = http.post(f"{server.url}/v1/chat/completions", body)
    assert status == 200, resp
    assert resp["object"] == "chat.completion"
    assert resp["choices"][0]["message"] == {"role": "assistant", "content": expected}
    evs = http.events(f"{server.url}/v1/chat/completions", body | {"stream_options": {"include_usage": True}})
    assert evs[-1] == "[DONE]" and evs[-2]["usage"]["completion_tokens"] == 12 and evs[-2]["choices"] == []
    deltas = [e["choices"][0]["delta"] for e in evs[:-2]]
    assert deltas[0]["role"] == "assistant"
    assert "".join(d.get("content", "") for d in deltas) == expected
    assert all(e["object"] == "chat.completion.chunk" for e in evs[:-1])


def test_seeded_sampling_over_http_repeats(server):
    body = {"prompt": [1, 2, 3], "max_tokens": 10, "temperature": 1.0, "seed": 5, "ignore_eos": True, "return_token_ids": True}
    first = http.post(f"{server.url}/v1/completions", body)[1]["choices"][0]["token_ids"]
    assert http.post(f"{server.url}/v1/completions", body)[1]["choices"][0]["token_ids"] == first


def test_models_and_health(server):
    status, body = http.get(f"{server.url}/v1/models")
    assert status == 200 and [m["id"] for m in body["data"]] == [MODEL]
    assert body["data"][0]["max_model_len"] == MAX_MODEL_LEN
    assert http.get(f"{server.url}/health") == (200, {"status": "ok"})


def test_metrics_use_vllm_names(server):
    http.post(f"{server.url}/v1/completions", {"prompt": [1, 2, 3], "max_tokens": 3, "ignore_eos": True})
    shared = list(range(100, 120))  # 5 full blocks of 4; the second request finds 4 cached
    for _ in range(2):
        http.post(f"{server.url}/v1/completions", {"prompt": shared, "max_tokens": 1})
    status, raw = http.request(f"{server.url}/metrics")
    text = raw.decode()
    assert status == 200
    samples = {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line and not line.startswith("#")}
    label = f'{{model_name="{MODEL}"}}'
    for name in ("vllm:num_requests_running", "vllm:num_requests_waiting", "vllm:kv_cache_usage_perc"):
        assert name + label in samples
    assert samples[f"vllm:time_to_first_token_seconds_count{label}"] >= 1
    assert samples[f"vllm:inter_token_latency_seconds_count{label}"] >= 2
    assert samples[f"vllm:generation_tokens_total{label}"] >= 3
    assert samples[f"vllm:prefix_cache_hits_total{label}"] >= 16
    assert samples[f"vllm:prefix_cache_queries_total{label}"] >= 43
    assert any(k.startswith("shardwright_replica_iteration_seconds_count{") and v >= 1 for k, v in samples.items())


TOO_LONG = list(range(MAX_MODEL_LEN))
BAD = [
    ("completions", b"{not json", 400, None, "could not parse the JSON body"),
    ("completions", b"[1, 2]", 400, None, "must be a JSON object"),
    ("completions", {"model": "gpt-9", "prompt": "hi"}, 404, "model", "The model `gpt-9` does not exist."),
    ("completions", {"prompt": TOO_LONG}, 400, "prompt", "maximum context length is 96 tokens. However, your request has 96 input tokens"),
    ("completions", {"prompt": [1, 2], "max_tokens": 0}, 400, "max_tokens", "max_tokens must be at least 1, got 0"),
    ("completions", {"prompt": [1, 2], "max_tokens": 95}, 400, "max_tokens", "you requested 97 tokens (2 in the prompt, 95 in the completion)"),
    ("completions", {"prompt": [1, 2], "max_tokens": "many"}, 400, "max_tokens", 'max_tokens must be an integer, got "many"'),
    ("completions", {"prompt": [1, 999]}, 400, "prompt", "token id 999 is outside the vocabulary (0 .. 259)"),
    ("completions", {"prompt": ["a", "b"]}, 400, "prompt", "one prompt per request is supported; got 2"),
    ("completions", {}, 400, "prompt", "prompt is required"),
    ("completions", {"prompt": "hi", "n": 2}, 400, "n", "n must be 1"),
    ("completions", {"prompt": "hi", "temperature": 3}, 400, "temperature", "temperature must be between 0 and 2, got 3.0"),
    ("chat/completions", {"messages": []}, 400, "messages", "messages must be a non-empty list"),
    ("chat/completions", {"messages": [{"role": "robot", "content": "x"}]}, 400, "messages[0].role", "messages[0].role must be one of"),
    ("chat/completions", {"messages": [{"role": "user", "content": "x"}], "max_completion_tokens": 0}, 400, "max_completion_tokens", "at least 1"),
    ("embeddings", {"input": "x"}, 404, None, "no such route: POST /v1/embeddings"),
]


@pytest.mark.parametrize("path,body,status,param,message", BAD, ids=[f"{i}-{b[2]}" for i, b in enumerate(BAD)])
def test_bad_requests_get_openai_errors_and_the_server_keeps_serving(server, path, body, status, param, message):
    got, resp = http.post(f"{server.url}/v1/{path}", body)
    assert got == status
    error = resp["error"]
    assert message in error["message"] and error["param"] == param
    assert error["type"] in ("invalid_request_error", "not_found_error")
    ok, after = http.post(f"{server.url}/v1/completions", {"prompt": [1, 2], "max_tokens": 2})
    assert ok == 200 and after["usage"]["completion_tokens"] <= 2


def test_a_client_that_leaves_mid_stream_has_its_request_stopped(model):
    eng = slowed(engine(model, max_model_len=MAX_MODEL_LEN), 0.01)  # the client leaves long before 80 tokens
    config = ServeConfig(model=tiny_config(vocab=VOCAB), model_name=MODEL, port=0)
    with ReplicaServer(config, engine=eng) as server:
        host, port = server.httpd.server_address[:2]
        body = b'{"prompt": [1, 2, 3], "max_tokens": 80, "ignore_eos": true, "stream": true}'
        with socket.create_connection((host, port), timeout=30) as sock:
            sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                         b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
            seen = b""
            while b"data: " not in seen:  # headers first, then the first event
                chunk = sock.recv(4096)
                assert chunk, seen
                seen += chunk
        # The server notices at one of its next writes and aborts the request.
        aborted = f'vllm:request_success_total{{finished_reason="abort",model_name="{MODEL}"}} 1.0'
        for _ in range(200):
            if aborted in http.request(f"{server.url}/metrics")[1].decode():
                break
            time.sleep(0.05)
        assert aborted in http.request(f"{server.url}/metrics")[1].decode()
        assert not eng.has_unfinished() and eng.kv.usage == 0


def test_many_concurrent_requests_under_kv_pressure_equal_alone(model):
    """Twelve clients at once on a cache too small for them all: preempted, recomputed, all exact."""
    ps = prompts([4 + 3 * i for i in range(12)], seed=11, vocab=VOCAB)
    config = ServeConfig(model=tiny_config(vocab=VOCAB), model_name=MODEL, port=0)
    results: dict[int, dict] = {}
    # Slowed, so that all twelve are queued while the first ones still run.
    eng = slowed(engine(model, num_blocks=24, max_model_len=MAX_MODEL_LEN, max_num_batched_tokens=32), 0.01)
    with ReplicaServer(config, engine=eng) as server:
        def run(i: int) -> None:
            results[i] = http.post(f"{server.url}/v1/completions", {
                "prompt": ps[i], "max_tokens": 12, "temperature": 0, "ignore_eos": True, "return_token_ids": True})[1]

        clients = [threading.Thread(target=run, args=(i,)) for i in range(len(ps))]
        for c in clients:
            c.start()
        for c in clients:
            c.join(120)
        metrics = http.request(f"{server.url}/metrics")[1].decode()
    for i, p in enumerate(ps):
        assert results[i]["choices"][0]["token_ids"] == generate_alone(model, p, 12), i
    preemptions = next(line for line in metrics.splitlines() if line.startswith("vllm:num_preemptions_total"))
    assert float(preemptions.rsplit(" ", 1)[1]) > 0
