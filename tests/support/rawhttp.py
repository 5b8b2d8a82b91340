"""Raw HTTP/1.1 over a socket for hostile-request tests: send any bytes (a lying
Content-Length, a body cut short, a header with a NUL) and read the one answer, so a test
can tell a 4xx from a 5xx, a dropped connection or a server that never answers."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import socket
import ssl
from typing import Any

TIMEOUT = 30


class NoAnswer(AssertionError):
    """The server closed the connection, or said nothing within the timeout, instead of answering."""


@dataclasses.dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def request(port: int, method: str, path: str, body: bytes = b"", *, headers: dict[str, str] | None = None, length: str | None = "auto",
            raw: bytes | None = None, tls: bool = False, half_close: bool = False, timeout: float = TIMEOUT) -> Answer:
    """One request to ``127.0.0.1:port``: ``raw`` bytes as they are, else a request line, the
    ``headers`` and ``body`` with ``Content-Length: length`` (``auto``: the body's length,
    None: no such header). ``half_close`` ends the sending side after the request, as a client
    whose body is cut short does (the server must not wait for the rest for ever)."""
    if raw is None:
        head = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", "Connection: close"]
        head += [f"{k}: {v}" for k, v in (headers or {}).items()]
        if length is not None:
            head.append(f"Content-Length: {len(body) if length == 'auto' else length}")
        raw = ("\r\n".join(head) + "\r\n\r\n").encode("utf-8", "surrogateescape") + body
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    if tls:
        sock = ssl._create_unverified_context().wrap_socket(sock)  # a test of what is answered, not of trust
    with sock:
        try:
            sock.sendall(raw)
            if half_close and not tls:
                sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # the server answered and closed before all of it was sent: that answer is read below
        return read_answer(sock, head_only=method == "HEAD")


def read_answer(sock: socket.socket, *, head_only: bool = False) -> Answer:
    """The first final answer (a ``100 Continue`` is skipped), its body read by its
    Content-Length, its chunks, or to the connection's end."""
    data = b""
    try:
        while True:
            while b"\r\n\r\n" not in data:
                data += _recv(sock, data)
            head, _, data = data.partition(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            status = int(lines[0].split()[1])
            if status >= 200:
                break
        headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
        if head_only:  # no body, unless the server could not read the method (a bad request line): to the end
            while chunk := sock.recv(65536):
                data += chunk
        elif "content-length" in headers:
            while len(data) < int(headers["content-length"]):
                data += _recv(sock, data)
            data = data[:int(headers["content-length"])]  # what follows answers a request that a header's CR LF began
        elif headers.get("transfer-encoding") == "chunked":
            while not data.endswith(b"0\r\n\r\n"):  # the last chunk; an event never ends so (it ends in \n\n\r\n)
                data += _recv(sock, data)
        else:
            while chunk := sock.recv(65536):
                data += chunk
    except (TimeoutError, socket.timeout) as e:
        raise NoAnswer(f"no answer within {sock.gettimeout()} s (read {data[-300:]!r})") from e
    except ConnectionResetError as e:
        raise NoAnswer(f"the connection was reset after {data[-300:]!r}") from e
    return Answer(status, headers, data)


def _recv(sock: socket.socket, so_far: bytes) -> bytes:
    chunk = sock.recv(65536)
    if not chunk:
        raise NoAnswer(f"the connection closed after {so_far[-300:]!r}")
    return chunk


def recorder(handle_error, crashes: list[str]):
    """A server's ``handle_error`` as it is, what it would print (a handler thread's
    traceback) kept in ``crashes``, for a test to assert there is none."""
    def record(request, address) -> None:
        printed = io.StringIO()
        with contextlib.redirect_stderr(printed):
            handle_error(request, address)
        if printed.getvalue():
            crashes.append(printed.getvalue())
    return record
