"""Hostile requests to a rank's telemetry server (issue 23): ``/metrics``, ``/status``,
``/healthz`` and the token-guarded ``POST /control`` get malformed framing, missing, wrong
or odd tokens, and data shares of every type and size, over a raw socket.

What must hold: an answer below 500 (401 for a guarded path without the token, with no
body; any other error a JSON ``{"error": message}``, naming ``dataShares`` when they were
the fault); new shares are taken only from a 202, and only finite positive numbers; no
handler thread raises; the server answers ``/healthz`` and ``/status`` afterwards.
"""

from __future__ import annotations

import json
import math
import time

import pytest
from hypothesis import HealthCheck, event, given, settings, strategies as st

from shardwright.workers import telemetry as telemetry_module
from shardwright.workers.telemetry import Telemetry
from tests.support import rawhttp
from tests.support.hostile_http import BAD_BODIES, JSON, NUMBERS, ODD_PATHS, OTHER_METHODS, framed

TOKEN = "k" * 43
AUTH = {"Authorization": f"Bearer {TOKEN}"}
BODY_TIMEOUT = 1.0


@pytest.fixture(scope="module")
def rank():
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(telemetry_module, "BODY_TIMEOUT", BODY_TIMEOUT)
        t = Telemetry(job="j", namespace="ns", rank=0, world_size=2, generation=3, layout="dp=2,sp=1", total_steps=10)
        port = t.serve(0, host="127.0.0.1", token=TOKEN)
        crashes: list[str] = []
        t._server.handle_error = rawhttp.recorder(t._server.handle_error, crashes)
        yield t, port, crashes
        t.close()


def check(t: Telemetry, port: int, crashes: list[str], answer: rawhttp.Answer, *, head: bool = False) -> dict | None:
    """The invariants of every answer, then that the server still serves; returns the JSON error."""
    shares = t.take_shares()
    assert answer.status < 500, (answer.status, answer.body)
    assert (shares is not None) == (answer.status == 202), (answer.status, shares)
    if shares is not None:
        assert shares and all(math.isfinite(x) and x > 0 for x in shares), shares
    error = None
    if answer.status == 401:
        assert answer.body == b"" and answer.headers["www-authenticate"].startswith("Bearer")
    elif answer.status >= 400 and not head:
        assert answer.headers["content-type"] == "application/json", answer.headers
        error = answer.json()
        assert isinstance(error["error"], str) and error["error"] and "Traceback" not in error["error"], error
    assert not crashes, crashes[0]
    assert rawhttp.request(port, "GET", "/healthz").status == 200
    assert rawhttp.request(port, "GET", "/status", headers=AUTH).json()["generation"] == 3
    return error


SHARES = st.one_of(JSON, st.lists(st.one_of(NUMBERS, st.booleans(), st.none()), max_size=5), st.lists(st.floats(0.01, 100), min_size=1, max_size=4))
TOKENS = st.one_of(st.just(AUTH), st.just(AUTH), st.just({}), st.sampled_from(["Bearer", "Bearer ", f"Basic {TOKEN}", f"Bearer {TOKEN}\x00",
                                                                           f"Bearer {TOKEN[:-1]}", f"Bearer {TOKEN}é", "Bearer " + "k" * 10000]).map(lambda v: {"Authorization": v}),
                   st.text(max_size=20).filter(lambda v: "\n" not in v and "\r" not in v).map(lambda v: {"Authorization": v}))


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(shares=SHARES, headers=TOKENS)
def test_control_takes_only_finite_positive_shares_with_the_token(rank, shares, headers):
    t, port, crashes = rank
    answer = rawhttp.request(port, "POST", "/control", json.dumps({"dataShares": shares}).encode(), headers=headers)
    error = check(t, port, crashes, answer)
    event(f"status {answer.status}")
    if answer.status == 400:
        assert "dataShares" in error["error"], error
    assert answer.status != 202 or headers == AUTH


REQUESTS = framed(
    methods=st.just("POST") | st.just("GET") | OTHER_METHODS,
    paths=st.one_of(st.just("/control"), st.just("/control"), st.sampled_from(["/metrics", "/status", "/healthz", "/control?x=1", "/metrics?x=1"]), ODD_PATHS),
    bodies=st.one_of(st.just(b'{"dataShares": [1.5, 0.5]}'), BAD_BODIES),
    headers=TOKENS,
)


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(req=REQUESTS)
def test_malformed_framing_is_answered_below_500(rank, req):
    t, port, crashes = rank
    answer = rawhttp.request(port, req["method"], req["path"], req["body"], headers=req["headers"], length=req["length"], half_close=req["half_close"])
    check(t, port, crashes, answer, head=req["method"] == "HEAD")
    event(f"status {answer.status}")


@pytest.mark.parametrize(("body", "length", "half_close", "status", "says"), [
    (b'{"dataShares": [1, Infinity]}', "auto", False, 400, "dataShares must be"),
    (b'{"dataShares": [true]}', "auto", False, 400, "dataShares must be"),
    (b"[" * 100_000, "auto", False, 400, "not JSON"),
    (b"{}", "-1", False, 400, "Content-Length must be"),
    (b"{}", str(2**62), False, 413, "Content-Length must be"),
    (b'{"dataShares": [1]}', "500", True, 400, "ended before"),
    (b'{"dataShares": [1]}', "500", False, 408, "did not arrive"),
], ids=["infinite", "boolean", "deep", "negative-length", "huge-length", "cut-short", "slow-client"])
def test_what_once_crashed_or_was_taken_is_refused(rank, body, length, half_close, status, says):
    t, port, crashes = rank
    started = time.monotonic()
    answer = rawhttp.request(port, "POST", "/control", body, headers=AUTH, length=length, half_close=half_close)
    assert answer.status == status and says in check(t, port, crashes, answer)["error"], answer.body
    assert time.monotonic() - started < BODY_TIMEOUT + 10


def test_a_good_request_still_applies(rank):
    t, port, crashes = rank
    answer = rawhttp.request(port, "POST", "/control", b'{"dataShares": [1.5, 0.5]}', headers=AUTH)
    assert answer.status == 202 and t.take_shares() == [1.5, 0.5]
    assert rawhttp.request(port, "PUT", "/control", b"{}", headers=AUTH).status == 405
