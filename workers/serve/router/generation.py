"""One client request through the router: pick, forward, retry, migrate.

``Generation.chunks()`` yields the request's output token ids as they arrive and ends with
the finish reason, whichever replicas produced them. A replica that fails before the first
token: the request is tried on another (``retries``). A replica that fails mid-stream (its
process died, it stopped answering for ``request_timeout_s``, its engine failed): the
request continues on another replica as a new request whose prompt is the original prompt
plus every token already received, asking only for the tokens still owed. Greedy decoding
then gives exactly the tokens the first replica would have (the prompt's K/V are recomputed,
not copied); seeded sampling restarts its generator on the new replica, so only its first
part is reproducible.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Iterator
from typing import Any

from .. import protocol
from . import backend
from .config import RouterConfig
from .endpoints import Endpoints
from .plugins import Pick, Pipeline


@dataclasses.dataclass
class Counters:
    """What the router has done, for ``/status`` and tests (guarded by ``lock``)."""

    requests: int = 0
    #: Requests answered with an error the router made (no replica could serve them).
    failed: int = 0
    #: Attempts given up on a replica before the first token.
    retries: int = 0
    #: Streams continued on another replica after tokens were sent.
    migrations: int = 0
    #: Requests waiting now for a routable replica (a pool at zero wakes up on these).
    held: int = 0
    lock: threading.Lock = dataclasses.field(default_factory=threading.Lock, repr=False)

    def add(self, **by: int) -> None:
        with self.lock:
            for name, n in by.items():
                setattr(self, name, getattr(self, name) + n)

    def as_dict(self) -> dict[str, int]:
        with self.lock:
            return {"requests": self.requests, "failed": self.failed, "retries": self.retries, "migrations": self.migrations, "held": self.held}


class Generation:
    def __init__(self, config: RouterConfig, endpoints: Endpoints, connections: backend.Connections, pipeline: Pipeline,
                 pipeline_lock: threading.Lock, counters: Counters, req: protocol.GenerationRequest) -> None:
        self.config, self.endpoints, self.connections, self.pipeline, self.counters, self.req = config, endpoints, connections, pipeline, counters, req
        self._pipeline_lock = pipeline_lock
        self.tokens: list[int] = []
        self.finish_reason: str | None = None
        self.cached_tokens = 0
        #: Replicas that served part of it, in order.
        self.replicas: list[str] = []

    def chunks(self) -> Iterator[tuple[list[int], str | None]]:
        """``(new token ids, finish reason or None)`` until the finish; ``protocol.APIError``
        when no replica can serve it. Closing it closes the replica's stream."""
        failed: set[str] = set()
        failures = 0
        max_tokens = self.req.params.max_tokens
        while True:
            name, url = self._pick(frozenset(failed))
            self.replicas.append(name)
            self.endpoints.opened(name)
            broke = False  # the replica's fault (not the client leaving, not a bad request)
            try:
                for chunk in backend.stream(url, self._body(max_tokens - len(self.tokens)), connections=self.connections,
                                            connect_timeout=self.config.connect_timeout_s, read_timeout=self.config.request_timeout_s):
                    if chunk.cached_tokens is not None and len(self.replicas) == 1:
                        self.cached_tokens = chunk.cached_tokens
                    if chunk.token_ids:
                        self.tokens += chunk.token_ids
                        yield list(chunk.token_ids), None
                    if chunk.finish_reason:
                        self.finish_reason = chunk.finish_reason
                        yield [], chunk.finish_reason
                        return
            except backend.BackendRefused as e:
                error = e.body.get("error") or {}
                raise protocol.APIError(e.status, error.get("message", str(e)), param=error.get("param"), code=error.get("code"),
                                        type=error.get("type", "invalid_request_error")) from None
            except backend.BackendFailed as e:
                broke = True
                failed.add(name)
                failures += not e.draining
                if self.tokens and not self.config.migrate_on_failure:
                    raise protocol.APIError(502, f"replica {name} failed mid-stream and migration is off: {e}", type="server_error") from None
                if failures > self.config.retries:
                    raise protocol.APIError(502, f"gave up after {failures} failed attempts; last: {e}", type="server_error") from None
                self.counters.add(**({"migrations": 1} if self.tokens else {"retries": 1}))
                if len(self.tokens) >= max_tokens:  # it failed after the last token, before saying so
                    self.finish_reason = "length"
                    yield [], "length"
                    return
            finally:
                self.endpoints.closed(name, failed=broke)

    def _pick(self, exclude: frozenset[str]) -> tuple[str, str]:
        """A routable replica not in ``exclude``, waiting up to ``hold_s`` while none is routable."""
        pick = Pick(self.req.prompt_token_ids + self.tokens, exclude)
        deadline = time.monotonic() + self.config.hold_s
        held = False
        try:
            while True:
                candidates = self.endpoints.candidates()
                with self._pipeline_lock:
                    chosen = self.pipeline.pick(pick, candidates)
                ep = self.endpoints.get(chosen.name) if chosen else None
                if ep is not None:
                    return ep.name, ep.url
                if exclude and any(c.routable for c in candidates):  # only ones it failed on: waiting would not help
                    raise protocol.APIError(502, f"gave up: every routable replica failed this request ({', '.join(sorted(exclude))})", type="server_error")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise protocol.APIError(503, f"no routable replica within {self.config.hold_s:g} s; try again later", type="server_error", code="no_replica")
                if not held:
                    held = True
                    self.counters.add(held=1)
                with self.endpoints.changed:
                    self.endpoints.changed.wait(min(left, 0.05))
        finally:
            if held:
                self.counters.add(held=-1)

    def _body(self, max_tokens: int) -> dict[str, Any]:
        p = self.req.params
        return {
            "model": self.config.model_name, "prompt": self.req.prompt_token_ids + self.tokens, "max_tokens": max_tokens,
            "temperature": p.temperature, "top_p": p.top_p, "top_k": p.top_k, "seed": p.seed, "ignore_eos": p.ignore_eos,
            "stop_token_ids": list(p.stop_token_ids), "stream": True, "return_token_ids": True, "stream_options": {"include_usage": True},
        }
