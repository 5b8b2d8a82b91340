"""One attempt of a generation on one replica: a streamed ``/v1/completions`` with token ids.

The router always asks a replica for the same thing, whatever the client sent: the prompt as
token ids, ``stream: true`` and ``return_token_ids: true``, no stop strings (the router cuts
the text itself, so a stop string split by a migration is still found). Each event gives the
new token ids, so the router knows at every moment exactly which tokens the client has, and
a migration can continue from them.

Connections are kept alive: ``Connections`` holds a few idle ones per replica, reused by the
next request there, so a request pays no TCP handshake and no new server thread. A connection
goes back only after a stream that ended cleanly; any failure closes it and drops every idle
one to that replica, so failover never waits on a dead replica's sockets.

Errors become two values: ``BackendFailed`` (another replica may succeed: refused
connection, timeout, 5xx, a stream cut short) and ``BackendRefused`` (the request itself is
wrong: another replica would say the same).
"""

from __future__ import annotations

import dataclasses
import http.client
import json
import socket
import threading
import urllib.parse
from collections.abc import Generator, Iterator
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


class Connections:
    """Idle keep-alive connections per replica URL (thread-safe)."""

    def __init__(self, per_replica: int = 8) -> None:
        #: Idle connections kept per replica; beyond them a finished one is closed.
        self.per_replica = per_replica
        self._idle: dict[str, list[http.client.HTTPConnection]] = {}
        self._lock = threading.Lock()

    def take(self, url: str) -> http.client.HTTPConnection | None:
        with self._lock:
            idle = self._idle.get(url)
            return idle.pop() if idle else None

    def give(self, url: str, conn: http.client.HTTPConnection) -> None:
        with self._lock:
            idle = self._idle.setdefault(url, [])
            if len(idle) < self.per_replica:
                idle.append(conn)
                return
        conn.close()

    def idle(self, url: str) -> int:
        with self._lock:
            return len(self._idle.get(url, ()))

    def drop(self, url: str) -> None:
        """Close every idle connection to ``url`` (it failed, or it left the pool)."""
        with self._lock:
            idle = self._idle.pop(url, [])
        for conn in idle:
            conn.close()


def stream(url: str, body: dict[str, Any], *, connect_timeout: float, read_timeout: float,
           connections: Connections | None = None) -> Iterator[Chunk]:
    """The replica's new tokens as ``Chunk``s, then one empty ``Chunk`` with the finish reason.

    Closing the generator early closes the connection: the replica aborts the request and
    frees its blocks. Raises ``BackendFailed`` when the stream ends without a finish reason.
    """
    connections = connections or Connections(per_replica=0)
    conn = None
    try:
        conn, resp = _open(url, body, connections, connect_timeout, read_timeout)
        if resp.status != 200:
            raw = _read(resp)
            if 400 <= resp.status < 500 and resp.status != 429:
                raise BackendRefused(resp.status, raw)
            code = (raw.get("error") or {}).get("code") if isinstance(raw.get("error"), dict) else None
            raise BackendFailed(f"{url}: HTTP {resp.status}: {raw}", draining=code == "draining")
        last = yield from _events(url, resp)
        if _read_to_end(resp) and not resp.will_close:  # read to its end: the connection can take the next request
            connections.give(url, conn)
            conn = None
        yield last
    except BackendFailed:
        connections.drop(url)
        raise
    finally:
        if conn is not None:
            conn.close()


def _open(url: str, body: dict[str, Any], connections: Connections, connect_timeout: float,
          read_timeout: float) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
    """The request sent on an idle connection, or on a new one when there is none or the
    replica closed the idle one (that fails at once, so the new one costs no timeout)."""
    payload, headers = json.dumps(body).encode(), {"Content-Type": "application/json"}
    if (conn := connections.take(url)) is not None:
        try:
            conn.request("POST", "/v1/completions", payload, headers)
            return conn, conn.getresponse()
        except ConnectionError:
            conn.close()
        except (OSError, http.client.HTTPException) as e:  # a timeout: the replica, not the connection
            conn.close()
            raise BackendFailed(f"{url}: {type(e).__name__}: {e}") from None
    parts = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=connect_timeout)
    try:
        conn.connect()
        conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn.sock.settimeout(read_timeout)  # from now on: silence for this long is a failure
        conn.request("POST", "/v1/completions", payload, headers)
        return conn, conn.getresponse()
    except (OSError, http.client.HTTPException) as e:
        conn.close()
        raise BackendFailed(f"{url}: {type(e).__name__}: {e}") from None


def _events(url: str, resp: http.client.HTTPResponse) -> Generator[Chunk, None, Chunk]:
    """Yields the token chunks; returns the last one (no tokens, the finish reason)."""
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
    return Chunk((), finish, cached)


def _read_to_end(resp: http.client.HTTPResponse) -> bool:
    """Whether the rest of the response (the chunked stream's end) was read without error."""
    try:
        resp.read()
    except (OSError, http.client.HTTPException):
        return False
    return resp.isclosed()


def _read(resp: http.client.HTTPResponse) -> dict[str, Any]:
    try:
        body = json.loads(resp.read() or b"{}")
    except (OSError, ValueError, socket.timeout):
        return {}
    return body if isinstance(body, dict) else {}
