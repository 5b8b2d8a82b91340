"""The HTTP plumbing one replica's server and the router share (stdlib only, no torch).

``OpenAIHandler`` reads a bounded body, answers JSON, opens a server-sent event stream and
writes its events; ``PARSERS`` maps the generation routes to their ``protocol`` parsers;
``model_list`` is the ``/v1/models`` body; ``Server`` is the threaded server both run.

Connections are kept alive (HTTP/1.1): an event stream is sent in chunked encoding, so one
that ends cleanly leaves its connection open for the next request (the router keeps a few to
each replica); a stream cut short (an error, a client gone) closes it.
"""

from __future__ import annotations

import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from . import protocol

#: Largest request body read (bytes); a larger one gets 413 without being read.
MAX_BODY = 8 << 20
PARSERS = {"/v1/completions": protocol.parse_completion, "/v1/chat/completions": protocol.parse_chat}


def _sse(payload: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(payload).encode() + b"\n\n"


def model_list(model: protocol.ModelInfo, created: int) -> dict[str, Any]:
    card = {"id": model.name, "object": "model", "created": created, "owned_by": "shardwright", "max_model_len": model.max_model_len}
    return {"object": "list", "data": [card]}


class Server(ThreadingHTTPServer):
    """One thread per connection; threads die with the process."""

    daemon_threads = True
    #: Connections the kernel queues before they are accepted. The standard library's 5
    #: drops the rest of a burst of clients, who then wait a second to retry (TCP's SYN timer).
    request_queue_size = 256

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that left before its answer was written (a broken pipe, a reset) is no
        error of this server's: nothing to print. Anything else is printed as before."""
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class OpenAIHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    #: Small writes go out at once: on a kept-alive connection Nagle's algorithm would hold
    #: a response's body until the client's delayed ACK of its headers (40 ms).
    disable_nagle_algorithm = True
    #: Seconds a request body may take to arrive (a client that stalls gets 408, not a thread for ever).
    body_timeout = 30.0

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the stdlib's name
        pass  # one line per request is noise at serving rates; metrics count them

    @property
    def route(self) -> str:
        return self.path.split("?", 1)[0]

    def _body(self) -> bytes:
        """The body, of exactly ``Content-Length`` bytes; a body this cannot read whole (no
        such length, a chunked one, one cut short or too slow) is refused and the connection
        closed, so that none of it is taken for the next request."""
        given = self.headers.get_all("Content-Length") or ["0"]
        if "Transfer-Encoding" in self.headers:
            self.close_connection = True
            raise protocol.APIError(411, "a chunked request body is not read: send the body with a Content-Length header")
        if len(set(given)) > 1 or not (given[0].isascii() and given[0].isdigit()):
            self.close_connection = True
            raise protocol.APIError(400, f"Content-Length must be one non-negative integer, got {', '.join(given)[:100]!r}")
        length = int(given[0])
        if length > MAX_BODY:
            self.close_connection = True  # the unread body must not be taken for the next request
            raise protocol.APIError(413, f"the request body has {length} bytes; at most {MAX_BODY} are read")
        self.connection.settimeout(self.body_timeout)
        try:
            raw = self.rfile.read(length)
        except TimeoutError:
            raw = None
        finally:
            self.connection.settimeout(None)
        if raw is None or len(raw) < length:
            self.close_connection = True
            got = f"did not arrive within {self.body_timeout:g} s" if raw is None else f"ended after {len(raw)} bytes"
            raise protocol.APIError(408 if raw is None else 400, f"the request body {got}; Content-Length said {length}")
        return raw

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """The standard library's errors (a bad request line, a header too long, a method
        with no handler: 501, answered 405 here) as OpenAI-style JSON, the connection closed."""
        if code == 501:
            code, message = 405, f"method {self.command} is not allowed; this server answers GET and POST"
        short = self.responses.get(code, ("Error",))[0]
        if self.request_version == "HTTP/0.9":  # a line that is no HTTP/1 request still gets a status line
            self.request_version = "HTTP/1.0"
        body = json.dumps(protocol.APIError(code, message or short).body()).encode()
        self.close_connection = True
        self.send_response(code, short)
        self.send_header("Connection", "close")
        if code == 405:
            self.send_header("Allow", "GET, POST")
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _start_events(self, headers: dict[str, str] | None = None) -> None:
        self._chunked = self.request_version == "HTTP/1.1"  # HTTP/1.0: the stream ends when the connection does
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header(*(("Transfer-Encoding", "chunked") if self._chunked else ("Connection", "close")))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self._end_head()
        self.close_connection = True  # until the stream ends cleanly (``_done``)

    def _event(self, payload: dict[str, Any]) -> None:
        self._write_events(_sse(payload))

    def _done(self, last: list[dict[str, Any]] | tuple = ()) -> None:
        """The ``last`` events, ``[DONE]`` and the stream's end in one write; the connection
        stays open for the next request."""
        self._write_events(b"".join(map(_sse, last)) + b"data: [DONE]\n\n", end=True)
        self.close_connection = not self._chunked

    def _error_event(self, error: protocol.APIError) -> None:
        """An error after the stream's 200: one event saying so, then the connection closes."""
        self._write_events(_sse(error.body()), end=True)

    def _write_events(self, data: bytes, *, end: bool = False) -> None:
        if self._chunked:
            data = b"%x\r\n%s\r\n" % (len(data), data) + (b"0\r\n\r\n" if end else b"")
        self._write(data)

    def _error(self, error: protocol.APIError) -> None:
        self._json(error.status, error.body())

    def _json(self, status: int, payload: dict[str, Any], headers: dict[str, str] | None = None) -> None:
        self._send(status, json.dumps(payload).encode(), "application/json", headers)

    def _send(self, status: int, body: bytes, content_type: str, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self._end_head()
        self._write(body)

    def _end_head(self) -> None:
        """End the head without sending it: it goes out with the first data (``_write``)."""
        self._headers_buffer.append(b"\r\n")

    def _write(self, data: bytes) -> None:
        """The head, if not sent yet, and ``data`` in one write: one TCP segment, not two
        (each costs the peer a wake-up, which a loaded machine pays in milliseconds)."""
        self.wfile.write(b"".join(self._headers_buffer) + data)
        self._headers_buffer = []
