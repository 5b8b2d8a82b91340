"""One attempt of a generation on one replica: a streamed ``/v1/completions`` with token ids.

The router always asks a replica for the same thing, whatever the client sent: the prompt as
token ids, ``stream: true`` and ``return_token_ids: true``, no stop strings (the router cuts
the text itself, so a stop string split by a migration is still found). Each event gives the
new token ids, so the router knows at every moment exactly which tokens the client has, and
a migration can continue from them.

Errors become two values: ``BackendFailed`` (another replica may succeed: refused
connection, timeout, 5xx, a stream cut short) and ``BackendRefused`` (the request itself is
wrong: another replica would say the same).
"""

from __future__ import annotations

import dataclasses
import http.client
import json
import socket
import urllib.parse
from collections.abc import Iterator
from typing import Any


class BackendFailed(Exception):
    def __init__(self, message: str, *, draining: bool = False) -> None:
        super().__init__(message)
        #: The replica said it is draining (503 draining): not its fault, not a retry spent.
        self.draining = draining


class BackendRefused(Exception):
    """A 4xx: the client's request is at fault; passed through as it came."""

    def __init__(self, status: int, body: dict[str, Any]) -> None:
        super().__init__(f"{status}: {body}")
        self.status, self.body = status, body


@dataclasses.dataclass(frozen=True)
class Chunk:
    token_ids: tuple[int, ...]
    #: ``stop`` / ``length`` on the replica's last event, else None.
    finish_reason: str | None = None
    cached_tokens: int | None = None


def stream(url: str, body: dict[str, Any], *, connect_timeout: float, read_timeout: float) -> Iterator[Chunk]:
    """The replica's new tokens as ``Chunk``s, then one empty ``Chunk`` with the finish reason.

    Closing the generator closes the connection: the replica aborts the request and frees
    its blocks. Raises ``BackendFailed`` when the stream ends without a finish reason.
    """
    parts = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=connect_timeout)
    try:
        try:
            conn.connect()
            conn.sock.settimeout(read_timeout)  # from now on: silence for this long is a failure
            conn.request("POST", "/v1/completions", json.dumps(body).encode(), {"Content-Type": "application/json"})
            resp = conn.getresponse()
        except (OSError, http.client.HTTPException) as e:
            raise BackendFailed(f"{url}: {type(e).__name__}: {e}") from None
        if resp.status != 200:
            raw = _read(resp)
            if 400 <= resp.status < 500 and resp.status != 429:
                raise BackendRefused(resp.status, raw)
            code = (raw.get("error") or {}).get("code") if isinstance(raw.get("error"), dict) else None
            raise BackendFailed(f"{url}: HTTP {resp.status}: {raw}", draining=code == "draining")
        yield from _events(url, resp)
    finally:
        conn.close()


def _events(url: str, resp: http.client.HTTPResponse) -> Iterator[Chunk]:
    finish, cached = None, None
    while True:
        try:
            line = resp.readline()
        except (OSError, http.client.HTTPException) as e:  # timeouts are OSErrors
            if finish:
                break  # everything generated is here; only the usage is missing
            raise BackendFailed(f"{url}: stream broken: {type(e).__name__}: {e}") from None
        if not line or line.strip() == b"data: [DONE]":
            if finish:
                break
            raise BackendFailed(f"{url}: stream ended before the generation did")
        line = line.strip()
        if not line.startswith(b"data: "):
            continue
        try:
            event = json.loads(line[len(b"data: "):])
        except ValueError:
            raise BackendFailed(f"{url}: not JSON in the stream: {line[:80]!r}") from None
        if "error" in event:
            raise BackendFailed(f"{url}: {event['error']}")
        if usage := event.get("usage"):
            cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens")
        for choice in event.get("choices") or ():
            if ids := tuple(choice.get("token_ids") or ()):
                yield Chunk(ids)
            finish = finish or choice.get("finish_reason")
    yield Chunk((), finish, cached)


def _read(resp: http.client.HTTPResponse) -> dict[str, Any]:
    try:
        body = json.loads(resp.read() or b"{}")
    except (OSError, ValueError, socket.timeout):
        return {}
    return body if isinstance(body, dict) else {}
