"""A few lines of urllib for talking to a replica in tests (no client library needed)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

TIMEOUT = 30


def request(url: str, method: str = "GET", body: dict | bytes | None = None) -> tuple[int, bytes]:
    data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=TIMEOUT) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def post(url: str, body: dict | bytes) -> tuple[int, dict[str, Any]]:
    status, raw = request(url, "POST", body)
    return status, json.loads(raw)


def get(url: str) -> tuple[int, dict[str, Any]]:
    status, raw = request(url)
    return status, json.loads(raw)


def events(url: str, body: dict) -> list[Any]:
    """The server-sent events of a streamed request, JSON-decoded; ``[DONE]`` stays a string."""
    status, raw = request(url, "POST", body | {"stream": True})
    assert status == 200, raw
    out = []
    for block in raw.decode().split("\n\n"):
        if block:
            assert block.startswith("data: "), block
            data = block[len("data: ") :]
            out.append(data if data == "[DONE]" else json.loads(data))
    return out
