"""The HTTP plumbing one replica's server and the router share (stdlib only, no torch).

``OpenAIHandler`` reads a bounded body, answers JSON, opens a server-sent event stream and
writes its events; ``PARSERS`` maps the generation routes to their ``protocol`` parsers;
``model_list`` is the ``/v1/models`` body.
"""

from __future__ import annotations

import json
from http.server import BaseHTTPRequestHandler
from typing import Any

from . import protocol

#: Largest request body read (bytes); a larger one gets 413 without being read.
MAX_BODY = 8 << 20
PARSERS = {"/v1/completions": protocol.parse_completion, "/v1/chat/completions": protocol.parse_chat}


def model_list(model: protocol.ModelInfo, created: int) -> dict[str, Any]:
    card = {"id": model.name, "object": "model", "created": created, "owned_by": "shardwright", "max_model_len": model.max_model_len}
    return {"object": "list", "data": [card]}


class OpenAIHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the stdlib's name
        pass  # one line per request is noise at serving rates; metrics count them

    @property
    def route(self) -> str:
        return self.path.split("?", 1)[0]

    def _body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY:
            self.close_connection = True  # the unread body must not be taken for the next request
            raise protocol.APIError(413, f"the request body has {length} bytes; at most {MAX_BODY} are read")
        return self.rfile.read(length)

    def _start_events(self, headers: dict[str, str] | None = None) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Connection", "close")  # the stream ends when the connection does
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.close_connection = True

    def _event(self, payload: dict[str, Any]) -> None:
        self.wfile.write(b"data: " + json.dumps(payload).encode() + b"\n\n")
        self.wfile.flush()

    def _done(self) -> None:
        self.wfile.write(b"data: [DONE]\n\n")
        self.wfile.flush()

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
        self.end_headers()
        self.wfile.write(body)
