"""Misbehaving replicas for router tests: one that never answers, one that dies mid-stream."""

from __future__ import annotations

import http.client
import json
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class FakeReplica:
    """Answers ``/status`` as a serving replica; ``POST`` does what ``on_post`` says."""

    def __init__(self, on_post) -> None:
        self.on_post = on_post
        self.released = threading.Event()
        self.posts = 0
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802
                body = json.dumps({"state": "serving", "waiting": 0, "running": 0}).encode()
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self) -> None:  # noqa: N802
                fake.posts += 1
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                self.close_connection = True
                fake.on_post(fake, self, raw)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def __enter__(self) -> FakeReplica:
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self.released.set()
        self.httpd.shutdown()
        self.httpd.server_close()


def hang(fake: FakeReplica, handler, raw: bytes) -> None:
    """Takes the request and says nothing until the test ends."""
    fake.released.wait(60)


def dies_after(events: int, upstream: str):
    """Relays a real replica's stream, then drops the connection after ``events`` events."""

    def on_post(fake: FakeReplica, handler, raw: bytes) -> None:
        parts = urllib.parse.urlsplit(upstream)
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
        conn.request("POST", handler.path, raw, {"Content-Type": "application/json"})
        resp = conn.getresponse()
        handler.send_response(resp.status)
        handler.send_header("Content-Type", "text/event-stream")
        handler.end_headers()
        sent = 0
        while sent < events and (line := resp.readline()):
            handler.wfile.write(line)
            sent += line.startswith(b"data: ")
        handler.wfile.flush()
        conn.close()  # the replica aborts the rest; the router sees the stream end early

    return on_post
