"""Hostile requests to the serving API (issue 23): a replica and the router in front of it,
both real servers on 127.0.0.1, get what a broken or malicious client sends, over a raw
socket: wrong methods, unknown paths, a missing, negative, huge or lying Content-Length, a
body cut short, invalid JSON or UTF-8, a chunked body, odd content types, headers with NUL,
CR or a second head, and every generation parameter of the wrong type or out of range.

What must hold for each: an answer (never a dropped connection or silence), below 500, an
error as OpenAI's JSON ``{"error": {"message", "type", "param", "code"}}`` whose ``param``
names the parameter that was broken; no exception in a handler thread; and afterwards the
server still serves (``/health`` 200: the engine thread alive, the replica routable).
"""

from __future__ import annotations

import json
import math
import threading
import time

import pytest
from hypothesis import HealthCheck, event, given, settings, strategies as st

from shardwright.workers.serve import httpbase
from shardwright.workers.serve.config import ServeConfig
from shardwright.workers.serve.router.config import RouterConfig
from shardwright.workers.serve.router.endpoints import Endpoints
from shardwright.workers.serve.router.server import Router
from shardwright.workers.serve.server import ReplicaServer
from tests.support import rawhttp
from tests.support.hostile_http import BAD_BODIES, JSON, ODD_PATHS, OTHER_METHODS, TEXT, framed

from .models import engine, tiny_config, tiny_model

VOCAB, MODEL, MAX_MODEL_LEN = 260, "tiny", 96
#: Seconds a body may take here (30 in production): the slow client's 408 comes sooner.
BODY_TIMEOUT = 1.0
BASE = {"/v1/completions": {"model": MODEL, "prompt": "hi", "max_tokens": 2},
        "/v1/chat/completions": {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}}
COMMON = ["model", "max_tokens", "max_completion_tokens", "temperature", "top_p", "n", "stop", "stream", "stream_options", "seed",
          "top_k", "stop_token_ids", "ignore_eos", "return_token_ids", "presence_penalty", "frequency_penalty", "logprobs", "user"]
PARAMS = {"/v1/completions": ["prompt", "best_of", "echo", "suffix", *COMMON], "/v1/chat/completions": ["messages", *COMMON]}
#: The other parameters an error may name when this one was broken: a prompt too long for
#: the requested output is refused on ``max_tokens`` (the two together exceed the context).
ALSO = {"prompt": ("max_tokens",), "messages": ("max_tokens",)}


@pytest.fixture(scope="module")
def servers():
    """{"replica": (port, crashes), "router": (port, crashes)}; ``crashes`` collects every
    exception a handler thread raised (what the standard library would print)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(httpbase.OpenAIHandler, "body_timeout", BODY_TIMEOUT)
        model = tiny_model(tiny_config(vocab=VOCAB))
        replica = ReplicaServer(ServeConfig(model=tiny_config(vocab=VOCAB), model_name=MODEL, port=0),
                                engine=engine(model, max_model_len=MAX_MODEL_LEN, max_num_batched_tokens=8)).start()
        router = Router(RouterConfig(model_name=MODEL, vocab_size=VOCAB, max_model_len=MAX_MODEL_LEN, block_size=4,
                                     probe_interval_s=0.05, request_timeout_s=30, hold_s=15),
                        Endpoints(probe_timeout_s=10)).start()  # a loaded machine's slow probe is no dead replica
        router.register("r0", replica.url)
        out = {}
        for name, server in (("replica", replica), ("router", router)):
            crashes: list[str] = []
            server.httpd.handle_error = rawhttp.recorder(server.httpd.handle_error, crashes)
            out[name] = (server.httpd.server_address[1], crashes)
        deadline = time.monotonic() + 20
        while not router.endpoints.routable() and time.monotonic() < deadline:
            threading.Event().wait(0.05)
        try:
            yield out
        finally:
            router.stop()
            replica.stop()


def still_serves(port: int, crashes: list[str]) -> None:
    """No handler raised, and ``/health`` is 200 (on a loaded machine the router's probe of
    the replica can be late, leaving it unroutable until the next one: a few seconds' grace)."""
    assert not crashes, crashes[0]
    deadline = time.monotonic() + 15
    while (health := rawhttp.request(port, "GET", "/health")).status != 200 and time.monotonic() < deadline:
        threading.Event().wait(0.1)
    assert health.status == 200, health.body


def check_answer(answer: rawhttp.Answer, *, head: bool = False) -> dict | None:
    """Below 500; an error is OpenAI's JSON with a message (a HEAD gets no body). Returns the error."""
    assert answer.status < 500, (answer.status, answer.body)
    if answer.status < 400 or head:
        return None
    assert answer.headers.get("content-type") == "application/json", answer.headers
    error = answer.json()["error"]
    assert isinstance(error["message"], str) and error["message"] and "Traceback" not in error["message"], error
    assert set(error) == {"message", "type", "param", "code"}, error
    return error


# ----------------------------------------------------------------------------- parameters

MESSAGES = st.lists(st.fixed_dictionaries({"role": st.one_of(st.sampled_from(["user", "system", "assistant", "tool", "developer"]), JSON)},
                                          optional={"content": st.one_of(TEXT, JSON, st.lists(st.fixed_dictionaries({"type": st.just("text"), "text": JSON})))}),
                    max_size=3)


@st.composite
def broken_body(draw) -> tuple[str, str, object]:
    route = draw(st.sampled_from(sorted(PARAMS)))
    param = draw(st.sampled_from(PARAMS[route]))
    value = draw(MESSAGES if param == "messages" and draw(st.booleans()) else JSON)
    return route, param, value


@pytest.mark.parametrize("target", ["replica", "router"])
@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(case=broken_body())
def test_a_parameter_of_the_wrong_type_or_out_of_range_is_a_4xx_naming_it(servers, target, case):
    route, param, value = case
    port, crashes = servers[target]
    body = json.dumps(BASE[route] | {param: value}).encode()  # NaN and Infinity as Python writes them; a lone surrogate escaped
    answer = rawhttp.request(port, "POST", route, body, headers={"Content-Type": "application/json"})
    error = check_answer(answer)
    if error is None:
        event("served")
        assert answer.status == 200
        assert b"data: [DONE]" in answer.body if value is True and param == "stream" else answer.json()["choices"], answer.body
    else:
        event(f"refused {answer.status}")
        named = error["param"] or ""
        assert named == param or named.startswith(f"{param}[") or named in ALSO.get(param, ()), (param, value, error)
    still_serves(port, crashes)


def test_the_parameters_reach_both_outcomes(servers):
    """Not vacuous: out-of-range values are refused naming them, good ones served."""
    port, crashes = servers["replica"]
    for param, value in [("temperature", 10**400), ("seed", 2**64), ("stop", 5), ("top_p", math.inf), ("max_tokens", 0)]:
        error = check_answer(rawhttp.request(port, "POST", "/v1/completions", json.dumps(BASE["/v1/completions"] | {param: value}).encode()))
        assert error and error["param"] == param, (param, error)
    for param, value in [("seed", -1), ("temperature", 1e-320)]:  # a subnormal temperature once stopped the engine
        assert rawhttp.request(port, "POST", "/v1/completions", json.dumps(BASE["/v1/completions"] | {param: value}).encode()).status == 200
    still_serves(port, crashes)


# ----------------------------------------------------------------------------- framing

GOOD = json.dumps(BASE["/v1/completions"]).encode()
REQUESTS = framed(
    methods=st.just("POST") | st.just("POST") | st.just("GET") | OTHER_METHODS,
    paths=st.one_of(st.just("/v1/completions"), st.just("/v1/completions"), st.just("/v1/chat/completions"), ODD_PATHS,
                    st.sampled_from(["/v1/models", "/health", "/status", "/metrics", "/v1/completions?stream=true", "/v1/completions/"])),
    bodies=st.one_of(st.just(GOOD), st.just(json.dumps(BASE["/v1/chat/completions"]).encode()), BAD_BODIES),
)


@pytest.mark.parametrize("target", ["replica", "router"])
@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(req=REQUESTS)
def test_malformed_framing_is_answered_below_500_with_a_json_error(servers, target, req):
    port, crashes = servers[target]
    answer = rawhttp.request(port, req["method"], req["path"], req["body"], headers=req["headers"], length=req["length"], half_close=req["half_close"])
    check_answer(answer, head=req["method"] == "HEAD")
    event(f"status {answer.status}")
    still_serves(port, crashes)


@pytest.mark.parametrize("target", ["replica", "router"])
@pytest.mark.parametrize(("length", "half_close", "status", "says"), [
    ("-1", False, 400, "Content-Length must be one non-negative integer"),
    ("abc", False, 400, "Content-Length must be one non-negative integer"),
    (str(2**70), False, 413, "at most"),
    ("500", True, 400, "ended after"),
    ("500", False, 408, f"did not arrive within {BODY_TIMEOUT:g} s"),
], ids=["negative", "not-a-number", "huge", "cut-short", "slow-client"])
def test_a_body_that_cannot_be_read_whole_is_refused_and_the_thread_freed(servers, target, length, half_close, status, says):
    port, crashes = servers[target]
    started = time.monotonic()
    answer = rawhttp.request(port, "POST", "/v1/completions", GOOD, length=length, half_close=half_close)
    assert answer.status == status and says in check_answer(answer)["message"], answer.body
    assert time.monotonic() - started < BODY_TIMEOUT + 5
    still_serves(port, crashes)


@pytest.mark.parametrize("target", ["replica", "router"])
def test_the_standard_librarys_refusals_are_json_too(servers, target):
    port, crashes = servers[target]
    answer = rawhttp.request(port, "PUT", "/v1/completions", GOOD)
    assert answer.status == 405 and answer.headers["allow"] == "GET, POST" and "PUT" in check_answer(answer)["message"]
    answer = rawhttp.request(port, "", "", raw=b"GARBAGE\r\n\r\n")
    assert answer.status == 400 and "Bad request syntax" in check_answer(answer)["message"]
    answer = rawhttp.request(port, "POST", "/v1/completions", b"5\r\nhello\r\n0\r\n\r\n", length=None, headers={"Transfer-Encoding": "chunked"})
    assert answer.status == 411 and "chunked" in check_answer(answer)["message"]
    still_serves(port, crashes)
