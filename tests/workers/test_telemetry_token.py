"""A rank's /status and /control answer only with the job's token; /healthz and /metrics
stay open (probes and Prometheus), and a wrong token is refused like a missing one."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import pytest

from shardwright.workers.config import TOKEN_ENV, RankEnv
from shardwright.workers.telemetry import Telemetry, authorized

TOKEN = "k" * 43


@pytest.fixture()
def rank():
    t = Telemetry(job="j", namespace="ns", rank=0, world_size=2, generation=3, layout="dp=2,sp=1", total_steps=10)
    port = t.serve(0, host="127.0.0.1", token=TOKEN)
    yield t, f"http://127.0.0.1:{port}"
    t.close()


def call(url: str, *, authorization: str | None = None, payload: dict | None = None) -> tuple[int, dict[str, str], bytes]:
    headers = {"Authorization": authorization} if authorization is not None else {}
    data = json.dumps(payload).encode() if payload is not None else None
    request = urllib.request.Request(url, data=data, headers=headers, method="POST" if data is not None else "GET")
    try:
        with urllib.request.urlopen(request, timeout=2) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


@pytest.mark.parametrize("authorization", [None, "", "Bearer", "Bearer wrong", f"Basic {TOKEN}", f"Bearer {TOKEN}x", f"Bearer {TOKEN[:-1]}"],
                         ids=["none", "empty", "no-token", "wrong", "basic", "longer", "shorter"])
def test_status_and_control_refuse_a_request_without_the_token(rank, authorization):
    t, url = rank
    status, headers, body = call(f"{url}/status", authorization=authorization)
    assert (status, body) == (401, b"") and headers["WWW-Authenticate"].startswith("Bearer")
    status, _, _ = call(f"{url}/control", authorization=authorization, payload={"dataShares": [1.5, 0.5]})
    assert status == 401 and t.take_shares() is None  # refused before the body is read
    assert call(f"{url}/nowhere", authorization=authorization)[0] == 401  # nothing else answers either


def test_status_and_control_answer_the_token(rank):
    t, url = rank
    status, _, body = call(f"{url}/status", authorization=f"Bearer {TOKEN}")
    assert status == 200 and json.loads(body)["generation"] == 3
    assert call(f"{url}/status", authorization=f"bearer  {TOKEN}")[0] == 200  # the scheme is case-insensitive
    status, _, _ = call(f"{url}/control", authorization=f"Bearer {TOKEN}", payload={"dataShares": [1.5, 0.5]})
    assert status == 202 and t.take_shares() == [1.5, 0.5]


def test_health_and_metrics_need_no_token(rank):
    _, url = rank
    assert call(f"{url}/healthz")[:3:2] == (200, b"ok")
    status, _, body = call(f"{url}/metrics")
    assert status == 200 and b"shardwright_rank_info" in body


def test_the_token_reaches_the_rank_through_its_env_and_stays_out_of_logs():
    env = RankEnv.from_environ({"RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "h", "MASTER_PORT": "1", TOKEN_ENV: TOKEN})
    assert env.token == TOKEN and env.to_environ()[TOKEN_ENV] == TOKEN
    assert TOKEN not in repr(env) and TOKEN not in str(env)
    assert RankEnv.from_environ({"RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "h", "MASTER_PORT": "1"}).token is None


def test_authorized_compares_the_whole_token():
    assert authorized(f"Bearer {TOKEN}", TOKEN)
    assert not authorized(None, TOKEN) and not authorized(TOKEN, TOKEN) and not authorized(f"Bearer {TOKEN} ", TOKEN + "y")
