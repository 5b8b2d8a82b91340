"""The router's HTTP front door: the same OpenAI API as one replica, in front of many.

The router parses a request as a replica would (``protocol``: the same 4xx errors), picks a
replica through the plugin pipeline (``plugins``), and forwards it as token ids
(``backend``). It renders the client's response itself (completion or chat, streamed or
not) from the token ids it receives, so a migrated stream reads exactly as an uninterrupted
one. The replica that served (first) is named in the ``X-Shardwright-Replica`` header.

``GET /health`` is 200 while some replica is routable; ``GET /status`` lists the replicas
and the router's counters. A prober thread reads every replica's ``/status``.
``Router.register`` / ``route_away`` / ``remove`` are the pool's levers.
"""

from __future__ import annotations

import itertools
import threading
import time
import uuid
from typing import Any

from .. import httpbase, protocol
from ..hfmodel import tokenizer_for
from ..tokenizer import TextStream
from .backend import Connections
from .config import RouterConfig
from .endpoints import Endpoints
from .generation import Counters, Generation
from .plugins import pipeline_for

REPLICA_HEADER = "X-Shardwright-Replica"


class Router:
    """``start()`` / ``stop()`` or a ``with`` block."""

    def __init__(self, config: RouterConfig, endpoints: Endpoints | None = None) -> None:
        self.config = config
        self.endpoints = endpoints or Endpoints()
        self.pipeline = pipeline_for(config.policy, block_size=config.block_size)
        self.pipeline_lock = threading.Lock()
        self.counters = Counters()
        #: Kept-alive connections to the replicas, shared by every request.
        self.connections = Connections()
        self.model = protocol.ModelInfo(config.model_name, config.max_model_len, tokenizer_for(config.vocab_size, config.tokenizer))
        self.httpd = httpbase.Server((config.host, config.port), _Handler)
        self.httpd.router = self  # type: ignore[attr-defined]
        self.created = int(time.time())
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}"

    # the pool's levers
    def register(self, name: str, url: str) -> None:
        self.endpoints.register(name, url)

    def route_away(self, name: str) -> None:
        self.endpoints.route_away(name)

    def remove(self, name: str) -> None:
        if ep := self.endpoints.get(name):
            self.connections.drop(ep.url)
        self.endpoints.remove(name)
        with self.pipeline_lock:
            self.pipeline.forget(name)

    def reconfigure(self, config: RouterConfig) -> None:
        """Take a new policy, retries, timeouts (the pool's spec changed); the port stays.
        Requests under way finish with the settings they started with."""
        with self.pipeline_lock:
            if (config.policy, config.block_size) != (self.config.policy, self.config.block_size):
                self.pipeline = pipeline_for(config.policy, block_size=config.block_size)
            self.config = config.model_copy(update={"host": self.config.host, "port": self.config.port})
            self.model = protocol.ModelInfo(config.model_name, config.max_model_len, tokenizer_for(config.vocab_size, config.tokenizer))

    def status(self) -> dict[str, Any]:
        eps = self.endpoints.snapshot()
        return {
            "url": self.url, "policy": self.config.policy, "routable": sorted(e.name for e in eps if e.routable),
            "replicas": [{"name": e.name, "url": e.url, "routable": e.routable, "serving": e.serving, "routedAway": e.routed_away,
                          "inFlight": e.in_flight, "waiting": e.waiting,
                          "idleConnections": self.connections.idle(e.url)} for e in sorted(eps, key=lambda e: e.name)],
        } | self.counters.as_dict()

    def start(self) -> Router:
        if self._threads:
            return self  # already serving (a ``with`` block around a started router)
        for target, name in ((self.httpd.serve_forever, "router-http"), (self._probe_loop, "router-probe")):
            t = threading.Thread(target=target, name=name, daemon=True)
            t.start()
            self._threads.append(t)
        return self

    def stop(self) -> None:
        self._stop.set()
        self.httpd.shutdown()
        self.httpd.server_close()
        for t in self._threads:
            t.join(5)

    def __enter__(self) -> Router:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _probe_loop(self) -> None:
        while not self._stop.is_set():
            self.endpoints.probe_all()
            self._stop.wait(self.config.probe_interval_s)

    def generation(self, req: protocol.GenerationRequest) -> Generation:
        self.counters.add(requests=1)
        return Generation(self.config, self.endpoints, self.connections, self.pipeline, self.pipeline_lock, self.counters, req)


class _Handler(httpbase.OpenAIHandler):
    server_version = "shardwright-router"

    @property
    def router(self) -> Router:
        return self.server.router  # type: ignore[attr-defined]

    def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
        path = self.route
        if path == "/health":
            n = len(self.router.endpoints.routable())
            self._json(200 if n else 503, {"status": "ok" if n else "no routable replica", "routable": n})
        elif path == "/status":
            self._json(200, self.router.status())
        elif path == "/v1/models":
            self._json(200, httpbase.model_list(self.router.model, self.router.created))
        else:
            self._error(protocol.APIError(404, f"no such route: GET {path}", type="not_found_error"))

    def do_POST(self) -> None:  # noqa: N802 - the stdlib's name
        path = self.route
        parse = httpbase.PARSERS.get(path)
        try:
            raw = self._body()
            if parse is None:
                raise protocol.APIError(404, f"no such route: POST {path}", type="not_found_error")
            req = parse(protocol.parse_json(raw), self.router.model)
        except protocol.APIError as e:
            return self._error(e)
        gen = self.router.generation(req)
        chunks = gen.chunks()
        try:
            first = next(chunks)  # before any header: a request no replica takes still gets an error status
        except protocol.APIError as e:
            if e.status >= 500:
                self.router.counters.add(failed=1)
            return self._error(e)
        request_id = f"{'cmpl' if req.kind == 'completion' else 'chatcmpl'}-{uuid.uuid4().hex[:24]}"
        try:
            if req.stream:
                self._stream(req, gen, first, chunks, request_id)
            else:
                self._complete(req, gen, first, chunks, request_id)
        finally:
            chunks.close()  # a client gone or a stop string: the replica's stream is closed too

    def _complete(self, req, gen: Generation, first, chunks, request_id: str) -> None:
        text, tokens, finish = TextStream(self.router.model.tokenizer, req.stop), [], None
        try:
            for ids, finish in itertools.chain([first], chunks):
                tokens += ids
                text.feed(ids, final=finish is not None)
                if text.stopped or finish:
                    break
        except protocol.APIError as e:
            self.router.counters.add(failed=1)
            return self._error(e)
        chunks.close()  # the replica is let go of before the client hears the end
        finish = "stop" if text.stopped else finish
        choice = protocol.choice(req, text.text, tokens, finish, delta=False)
        usage = protocol.usage(len(req.prompt_token_ids), len(tokens), gen.cached_tokens)
        body = protocol.envelope(req, request_id, int(time.time()), self.router.model.name, [choice], chunk=False, usage=usage)
        self._json(200, body, {REPLICA_HEADER: gen.replicas[0]})

    def _stream(self, req, gen: Generation, first, chunks, request_id: str) -> None:
        self._start_events({REPLICA_HEADER: gen.replicas[0]})
        created, name = int(time.time()), self.router.model.name
        text, count, is_first, last = TextStream(self.router.model.tokenizer, req.stop), 0, True, []
        try:
            for ids, finish in itertools.chain([first], chunks):
                count += len(ids)
                delta = text.feed(ids, final=finish is not None)
                finish = "stop" if text.stopped else finish
                if delta or finish or is_first or (req.return_token_ids and ids):
                    choice = protocol.choice(req, delta, list(ids), finish, delta=True, first=is_first)
                    event = protocol.envelope(req, request_id, created, name, [choice], chunk=True)
                    if finish:  # the last event goes out with the stream's end, in one write
                        last.append(event)
                    else:
                        self._event(event)
                    is_first = False
                if finish:
                    break
            chunks.close()  # the replica is let go of before the client hears the end
            if req.include_usage:
                usage = protocol.usage(len(req.prompt_token_ids), count, gen.cached_tokens)
                last.append(protocol.envelope(req, request_id, created, name, [], chunk=True, usage=usage))
            self._done(last)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client left; closing ``chunks`` aborts the request on its replica
        except protocol.APIError as e:
            self.router.counters.add(failed=1)
            self._error_event(e)
