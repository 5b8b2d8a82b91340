"""The router keeps connections to a replica alive: a finished stream leaves its connection
for the next request; a stream cut short, a connection the replica closed and a failed
replica never leave one behind."""

from __future__ import annotations

import json
import socket
import time

import pytest

from shardwright.workers.serve.config import ServeConfig
from shardwright.workers.serve.router import backend
from shardwright.workers.serve.router.config import RouterConfig
from shardwright.workers.serve.router.server import Router
from shardwright.workers.serve.server import ReplicaServer

from . import http
from .models import engine, tiny_config, tiny_model

VOCAB = 260


@pytest.fixture
def replica():
    server = ReplicaServer(ServeConfig(model=tiny_config(vocab=VOCAB), model_name="tiny"), engine=engine(tiny_model(tiny_config(vocab=VOCAB))))
    with server:
        yield server


def _body(n: int = 3) -> dict:
    return {"model": "tiny", "prompt": [1, 2, 3], "max_tokens": n, "temperature": 0, "ignore_eos": True, "stream": True, "return_token_ids": True}


def _run(url: str, conns: backend.Connections) -> list[int]:
    chunks = list(backend.stream(url, _body(), connect_timeout=5, read_timeout=10, connections=conns))
    assert chunks[-1].finish_reason == "length"
    return [t for c in chunks for t in c.token_ids]


def _idle_port(conns: backend.Connections, url: str) -> int:
    conn = conns.take(url)
    port = conn.sock.getsockname()[1]
    conns.give(url, conn)
    return port


def test_finished_streams_reuse_one_connection(replica):
    conns = backend.Connections()
    first = _run(replica.url, conns)
    port = _idle_port(conns, replica.url)
    for _ in range(3):
        assert _run(replica.url, conns) == first
        assert conns.idle(replica.url) == 1 and _idle_port(conns, replica.url) == port


def test_a_stream_closed_early_leaves_no_connection(replica):
    conns = backend.Connections()
    chunks = backend.stream(replica.url, _body(20), connect_timeout=5, read_timeout=10, connections=conns)
    assert next(chunks).token_ids
    chunks.close()  # the client left: the replica must see the connection close and abort
    assert conns.idle(replica.url) == 0


def test_a_connection_closed_while_idle_is_replaced_by_a_fresh_one(replica):
    conns = backend.Connections()
    want = _run(replica.url, conns)
    stale = conns.take(replica.url)
    stale.sock.shutdown(socket.SHUT_WR)  # writing on it now fails at once, as on one the replica closed
    conns.give(replica.url, stale)
    assert _run(replica.url, conns) == want
    assert conns.idle(replica.url) == 1 and conns.take(replica.url) is not stale


def test_a_failed_replica_drops_its_idle_connections(replica):
    conns = backend.Connections()
    _run(replica.url, conns)
    replica.engine_thread.drain(0)  # it now answers 503 draining
    with pytest.raises(backend.BackendFailed):
        _run(replica.url, conns)
    assert conns.idle(replica.url) == 0


def test_the_router_keeps_one_connection_per_sequential_client(replica):
    router = Router(RouterConfig(model_name="tiny", vocab_size=VOCAB, max_model_len=96, block_size=4, probe_interval_s=0.05)).start()
    try:
        router.register("r0", replica.url)
        deadline = time.monotonic() + 20
        while not router.endpoints.routable():
            assert time.monotonic() < deadline, "the replica never became routable"
            time.sleep(0.05)
        outputs = [http.events(f"{router.url}/v1/completions", _body())[-2]["choices"][0]["finish_reason"] for _ in range(4)]
        status = http.get(f"{router.url}/status")[1]
        assert outputs == ["length"] * 4 and status["failed"] == 0
        assert [r["idleConnections"] for r in status["replicas"]] == [1]
    finally:
        router.stop()


def test_an_http_1_0_client_gets_the_stream_ended_by_the_connection(replica):
    """No chunked encoding for HTTP/1.0: the events as they are, then the replica closes."""
    with socket.create_connection(("127.0.0.1", replica.httpd.server_address[1]), timeout=10) as sock:
        body = json.dumps(_body()).encode()
        sock.sendall(b"POST /v1/completions HTTP/1.0\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
        raw = b"".join(iter(lambda: sock.recv(65536), b""))  # read until the replica closes
    head, _, events = raw.partition(b"\r\n\r\n")
    assert b"Transfer-Encoding" not in head and b"Connection: close" in head
    assert events.endswith(b"data: [DONE]\n\n") and events.count(b"data: {") == 3  # three tokens, the last with its finish reason
