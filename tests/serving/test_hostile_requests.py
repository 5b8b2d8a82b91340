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

import contextlib
import io
import json
import math
import threading
import time

import pytest
from hypothesis import HealthCheck, event, given, settings, strategies as st

from shardwright.workers.serve import httpbase
from shardwright.workers.serve.config import ServeConfig
from shardwright.workers.serve.router.config import RouterConfig
from shardwright.workers.serve.router.server import Router
from shardwright.workers.serve.server import ReplicaServer
from tests.support import rawhttp

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
                                     probe_interval_s=0.05, request_timeout_s=10, hold_s=2)).start()
        router.register("r0", replica.url)
        out = {}
        for name, server in (("replica", replica), ("router", router)):
            crashes: list[str] = []
            server.httpd.handle_error = _recorder(server.httpd.handle_error, crashes)
            out[name] = (server.httpd.server_address[1], crashes)
        deadline = time.monotonic() + 20
        while not router.endpoints.routable() and time.monotonic() < deadline:
            threading.Event().wait(0.05)
        try:
            yield out
        finally:
            router.stop()
            replica.stop()


def _recorder(handle_error, crashes: list[str]):
    """``handle_error`` as the server has it, what it would print kept in ``crashes``."""
    def record(request, address) -> None:
        printed = io.StringIO()
        with contextlib.redirect_stderr(printed):
            handle_error(request, address)
        if printed.getvalue():
            crashes.append(printed.getvalue())
    return record


def still_serves(port: int, crashes: list[str]) -> None:
    assert not crashes, crashes[0]
    health = rawhttp.request(port, "GET", "/health")
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

NUMBERS = st.one_of(
    st.integers(-3, 3), st.sampled_from([95, 96, 97, 259, 260, 2**31, 2**63 - 1, 2**63, 2**64, -(2**63) - 1, 10**400]),
    st.integers(-(2**70), 2**70), st.floats(), st.sampled_from([-0.0, 2.0000001, 1e-320, 1e308, 0.5]),
)
TEXT = st.one_of(st.text(max_size=20), st.sampled_from(["", " ", "a\x00b", "\ud800", "\u202eevil", "é" * 200, "null", "true", MODEL, "<|endoftext|>"]))
HOSTILE = st.recursive(st.one_of(st.none(), st.booleans(), NUMBERS, TEXT),
                       lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=3)), max_leaves=6)
MESSAGES = st.lists(st.fixed_dictionaries({"role": st.one_of(st.sampled_from(["user", "system", "assistant", "tool", "developer"]), HOSTILE)},
                                          optional={"content": st.one_of(TEXT, HOSTILE, st.lists(st.fixed_dictionaries({"type": st.just("text"), "text": HOSTILE})))}),
                    max_size=3)


@st.composite
def broken_body(draw) -> tuple[str, str, object]:
    route = draw(st.sampled_from(sorted(PARAMS)))
    param = draw(st.sampled_from(PARAMS[route]))
    value = draw(MESSAGES if param == "messages" and draw(st.booleans()) else HOSTILE)
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
    assert rawhttp.request(port, "POST", "/v1/completions", json.dumps(BASE["/v1/completions"] | {"seed": -1}).encode()).status == 200
    still_serves(port, crashes)


# ----------------------------------------------------------------------------- framing

GOOD = json.dumps(BASE["/v1/completions"]).encode()
METHODS = st.just("POST") | st.just("POST") | st.just("GET") | st.sampled_from(["PUT", "DELETE", "PATCH", "OPTIONS", "HEAD", "TRACE", "CONNECT", "FOO", "get", "P\x00ST"])
PATHS = st.one_of(st.just("/v1/completions"), st.just("/v1/completions"), st.just("/v1/chat/completions"), st.sampled_from(["/v1/models", "/health", "/status", "/metrics", "/", "*",
                                   "/v1/completions?stream=true", "/v1/completions/", "//v1/completions", "/v1/../v1/models", "/%00",
                                   "/v1/models#x", "/" + "a" * 5000, "http://evil.example/v1/models", "/v1/mödels", "/a b"]),
                  # no newline: a request line cut in two words is HTTP/0.9, answered without a status line (it has none)
                  st.text(max_size=30).filter(lambda t: "\n" not in t).map(lambda t: "/" + t))
BODIES = st.one_of(st.just(GOOD), st.just(json.dumps(BASE["/v1/chat/completions"]).encode()),
                   st.sampled_from([b"", b"{", b"[]", b"null", b"1e999", b'"x"', b"\xff\xfe{}", b"\x00" * 10, b"[" * 5000, b'{"prompt": "' + b"9" * 5000]),
                   st.binary(max_size=64))
LENGTHS = st.one_of(st.just("auto"), st.none(), st.sampled_from(["abc", "-1", "1e3", " 5", "+5", "5_0", "٣", "0x10", "", str(2**70), str(httpbase.MAX_BODY + 1)]),
                    st.integers(0, 200).map(str))
CONTENT_TYPES = st.sampled_from([None, "application/json", "text/plain", "multipart/form-data; boundary=x", "application/x-www-form-urlencoded",
                                 "application/json; charset=latin-1", "", "\x00"])
HEADER_VALUES = st.one_of(st.text(max_size=20), st.sampled_from(["a\x00b", "a\rb", "x\r\nX-Injected: 1", "x\r\n\r\nGET / HTTP/1.1", "é", "v" * 9000]))
EXTRA = st.lists(st.one_of(
    st.tuples(st.sampled_from(["Content-Length", "Transfer-Encoding", "Expect", "Connection", "Host", "Authorization", "X-Test", "Content-Encoding"]),
              st.one_of(st.sampled_from(["3", "chunked", "gzip", "100-continue", "keep-alive", "upgrade"]), HEADER_VALUES)),
    st.tuples(st.text(min_size=1, max_size=10).filter(lambda n: ":" not in n and "\r" not in n and "\n" not in n), HEADER_VALUES),
), max_size=3)


@st.composite
def framed(draw) -> dict:
    method, path, body, length = draw(METHODS), draw(PATHS), draw(BODIES), draw(LENGTHS)
    headers = dict(draw(EXTRA))
    if (content_type := draw(CONTENT_TYPES)) is not None:
        headers["Content-Type"] = content_type
    # A body shorter than its length is sent with the sending side closed (the client gave
    # up); a client that stalls instead is the slow client's test, below.
    half_close = length is not None and length.isdigit() and int(length) > len(body)
    return {"method": method, "path": path, "body": body, "length": length, "headers": headers, "half_close": half_close}


@pytest.mark.parametrize("target", ["replica", "router"])
@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(req=framed())
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
