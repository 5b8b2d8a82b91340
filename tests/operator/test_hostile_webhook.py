"""Hostile requests to the operator's admission webhook and its probe port (issue 23): the
webhook (plain HTTP here, ``insecure``: the TLS layer is aiohttp's and the certificate
tests') gets bodies that are no AdmissionReview, reviews of every shape, the example
TrainingJob and ServingPool as objects, and malformed framing; the probe port gets framing.

What must hold: an answer below 500; a review answered is an AdmissionReview with the
request's uid, allowing exactly what ``validate`` accepts (both kinds) and refusing with its
messages; a body that is no review gets 400 with a JSON error naming what is wrong; the
servers answer a good review and ``/healthz`` afterwards. (A request aiohttp cannot parse,
a bad Content-Length say, gets aiohttp's own plain-text 400.)
"""

from __future__ import annotations

import asyncio
import json
import threading

import pytest
import yaml
from hypothesis import HealthCheck, assume, event, given, settings, strategies as st

from shardwright.operator import handlers, probes, webhook
from shardwright.operator.api import validate
from tests.support import rawhttp
from tests.support.hostile_http import BAD_BODIES, JSON, ODD_PATHS, OTHER_METHODS, framed
from tests.support.manifests import REPO, edited

EXAMPLES = [yaml.safe_load((REPO / "examples" / name).read_text()) for name in ("tiny-train.yaml", "tiny-serve.yaml")]
GOOD = {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "request": {"uid": "u-1", "operation": "CREATE", "object": EXAMPLES[0]}}


@pytest.fixture(scope="module")
def ports():
    """(webhook port, probe port), served by an event loop on a thread as the operator does."""
    loop = asyncio.new_event_loop()
    server = webhook.AdmissionServer(handlers.admit, addr="127.0.0.1", port=None, certfile=None, keyfile=None, insecure=True)
    port = loop.run_until_complete(server.start())
    runner = loop.run_until_complete(probes.serve("127.0.0.1", 0, None))
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    yield port, runner.addresses[0][1]
    asyncio.run_coroutine_threadsafe(server.stop(), loop).result(10)
    asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(10)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)


def still_serves(port: int, probe_port: int) -> None:
    answer = rawhttp.request(port, "POST", "/admit", json.dumps(GOOD).encode())
    assert answer.status == 200 and answer.json()["response"] == {"uid": "u-1", "allowed": True}, answer.body
    assert rawhttp.request(probe_port, "GET", "/healthz").status == 200


OBJECTS = st.one_of(st.sampled_from(EXAMPLES), JSON,
                    st.builds(lambda doc, path, value: edited({path: value}, doc), st.sampled_from(EXAMPLES),
                              st.sampled_from(["spec", "metadata", "metadata.name", "kind", "apiVersion", "spec.model", "spec.replicas", "spec.training.steps"]), JSON))
REQUESTS = st.one_of(JSON, st.fixed_dictionaries({}, optional={
    "uid": st.one_of(st.just("u-2"), JSON), "operation": st.one_of(st.sampled_from(["CREATE", "UPDATE", "DELETE", "CONNECT"]), JSON),
    "object": OBJECTS, "oldObject": OBJECTS}))
CREATES = st.fixed_dictionaries({"uid": st.just("u-3"), "operation": st.just("CREATE"), "object": OBJECTS})
REVIEWS = st.one_of(JSON, st.fixed_dictionaries({"apiVersion": st.just("admission.k8s.io/v1"), "kind": st.just("AdmissionReview")}, optional={"request": REQUESTS}),
                    st.fixed_dictionaries({"request": CREATES}), st.fixed_dictionaries({"request": CREATES}))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(review=REVIEWS)
def test_a_review_of_any_shape_is_answered_as_validate_judges(ports, review):
    port, probe_port = ports
    answer = rawhttp.request(port, "POST", "/admit", json.dumps(review).encode())
    assert answer.status in (200, 400), (answer.status, answer.body)
    event(f"status {answer.status}")
    request = review.get("request") if isinstance(review, dict) else None
    if answer.status == 400:
        message = answer.json()["error"]
        assert message.startswith("not an AdmissionReview: request"), message
    else:
        response = answer.json()["response"]
        assert isinstance(request, dict) and response["uid"] == request.get("uid", "")
        obj, operation = request.get("object"), request.get("operation")
        if operation == "CREATE":
            problems = validate(obj or {})[1]
            event("allowed" if response["allowed"] else "refused")
            assert response["allowed"] == (not problems), (problems, response)
            if problems:
                assert response["status"] == {"code": 422, "message": "; ".join(map(str, problems))}
        elif operation not in ("UPDATE",):
            assert response["allowed"] is True  # a delete (or anything else) is never refused
    still_serves(port, probe_port)


@pytest.mark.parametrize("body", [b"[1]", b'"x"', b'{"request": [1]}', b'{"request": {"operation": "CREATE", "object": "abc"}}',
                                  b'{"request": {"operation": "UPDATE", "object": {}, "oldObject": [1]}}', b'{"request": {"uid": 5}}',
                                  b"[" * 100_000, b'{"a": "\xff"}', b'{"a": ' + b"9" * 5000 + b"}"],
                         ids=["list", "string", "request-list", "object-string", "old-list", "uid-number", "deep", "not-utf8", "huge-integer"])
def test_what_once_crashed_the_webhook_is_a_400(ports, body):
    port, probe_port = ports
    answer = rawhttp.request(port, "POST", "/admit", body)
    assert answer.status == 400 and answer.json()["error"].startswith("not an AdmissionReview"), answer.body
    still_serves(port, probe_port)


def test_a_serving_pool_is_judged_like_a_training_job(ports):
    """Both kinds reach ``admit``: the example ServingPool is allowed, one with a cross-field fault refused naming the field."""
    port, _ = ports
    for obj in (EXAMPLES[1], edited({"spec.model": {"name": 5}}, EXAMPLES[1])):
        review = {"request": {"uid": "p", "operation": "CREATE", "object": obj}}
        response = rawhttp.request(port, "POST", "/admit", json.dumps(review).encode()).json()["response"]
        problems = validate(obj)[1]
        assert response["allowed"] == (not problems) and (not problems or str(problems[0]) in response["status"]["message"]), response


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(req=framed(methods=st.just("POST") | st.just("GET") | OTHER_METHODS, paths=st.one_of(st.just("/admit"), st.just("/healthz"), st.just("/readyz"), ODD_PATHS),
                  bodies=st.one_of(st.just(json.dumps(GOOD).encode()), BAD_BODIES)),
       to_probes=st.booleans())
def test_malformed_framing_is_answered_below_500(ports, req, to_probes):
    # aiohttp answers no client that stops sending before its Content-Length (it takes the
    # end as the client gone) and waits on one that stalls, in a coroutine, not a thread
    assume(not req["half_close"])
    port, probe_port = ports
    answer = rawhttp.request(probe_port if to_probes else port, req["method"], req["path"], req["body"], headers=req["headers"], length=req["length"])
    assert answer.status < 500, (answer.status, answer.body)
    event(f"status {answer.status}")
    still_serves(port, probe_port)
