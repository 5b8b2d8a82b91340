"""The engine on its own thread, fed by many HTTP threads.

``EngineThread.submit`` queues a prompt and returns a ``RequestStream``; the engine thread
steps while there is work and puts each iteration's ``RequestOutput`` on the streams of
the requests it advanced. The engine itself stays single-threaded: every call into it holds
one lock (a submit waits at most one iteration). Latency metrics are taken here, where the
tokens leave the engine: time to first token from arrival, the gap between a request's
outputs, end to end.

An exception in an iteration ends every open stream with that error and marks the engine
unhealthy (``/health`` answers 503) rather than leaving clients to wait forever. ``drain``
refuses new requests and waits for the running ones (a rollout or scale-down loses none).
"""

from __future__ import annotations

import dataclasses
import queue
import threading
import time
from collections.abc import Iterator, Sequence

from .engine import Engine, RequestOutput
from .metrics import ServingMetrics
from .request import SamplingParams
from .stats import ReplicaStats


class EngineFailed(RuntimeError):
    """The engine thread stopped on an error; the request cannot finish."""


class Draining(RuntimeError):
    """The replica finishes what it has and takes nothing new (rollout, scale-down, stop)."""


@dataclasses.dataclass(eq=False)
class RequestStream:
    """One request's outputs as the engine produces them; read by exactly one consumer."""

    request_id: str
    num_prompt_tokens: int
    arrival: float = dataclasses.field(default_factory=time.monotonic)
    first_token: float | None = None
    last_token: float | None = None
    _queue: queue.Queue = dataclasses.field(default_factory=queue.Queue)

    def put(self, item: RequestOutput | BaseException) -> None:
        self._queue.put(item)

    def __iter__(self) -> Iterator[RequestOutput]:
        """Outputs until the finished one; raises ``EngineFailed`` if the engine died."""
        while True:
            item = self._queue.get()
            if isinstance(item, BaseException):
                raise EngineFailed(str(item)) from item
            yield item
            if item.finished:
                return


class EngineThread:
    def __init__(self, engine: Engine, metrics: ServingMetrics | None = None) -> None:
        self.engine = engine
        self.metrics = metrics
        self._cond = threading.Condition()
        self._streams: dict[str, RequestStream] = {}
        self._stopping = False
        self.draining = False
        self.stats = ReplicaStats()
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="engine", daemon=True)
        self._ids = 0

    @property
    def healthy(self) -> bool:
        return self.error is None and self._thread.is_alive()

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        self._thread.join(timeout)

    def drain(self, timeout: float) -> bool:
        """Refuse new requests, wait up to ``timeout`` s for the running ones; True if all finished."""
        deadline = time.monotonic() + timeout
        with self._cond:
            self.draining = True
            while self.engine.has_unfinished() and self.error is None:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
        return self.error is None

    def submit(self, prompt_token_ids: Sequence[int], params: SamplingParams, prefix: str = "cmpl") -> RequestStream:
        """Queue one request; ValueError for a prompt the engine refuses, EngineFailed if it is
        down, Draining while it drains."""
        with self._cond:
            if self.error is not None or self._stopping:
                raise EngineFailed(f"the engine is not running ({self.error or 'stopping'})")
            if self.draining:
                raise Draining("this replica is draining and takes no new requests; send it to another replica")
            self._ids += 1
            request = self.engine.add_request(prompt_token_ids, params, request_id=f"{prefix}-{self._ids}")
            stream = self._streams[request.request_id] = RequestStream(request.request_id, request.num_prompt_tokens)
            self._publish_load()
            self._cond.notify_all()
        return stream

    def abort(self, request_id: str, reason: str = "abort") -> None:
        """End a request early; ``reason`` is ``abort`` (client gone) or ``stop`` (a stop string).

        Its stream gets nothing more; the request counts as finished for that reason.
        """
        with self._cond:
            stream = self._streams.pop(request_id, None)
            request = self.engine.scheduler.requests.get(request_id)
            if stream is None or request is None:
                return
            self.engine.abort(request_id)
            self._publish_load()
            if self.metrics is not None:
                self.metrics.finished(reason, seconds=time.monotonic() - stream.arrival,
                                      prompt_tokens=request.num_prompt_tokens, output_tokens=len(request.output_token_ids))

    def _run(self) -> None:
        try:
            while True:
                with self._cond:
                    while not self._stopping and not self.engine.has_unfinished():
                        self._cond.wait()
                    if self._stopping:
                        break
                    kv = self.engine.kv
                    queries, hits = kv.prefix_queries, kv.prefix_hits
                    outputs = self.engine.step()
                    streams = [(o, self._streams.get(o.request_id)) for o in outputs]
                    for o in outputs:
                        if o.finished:
                            self._streams.pop(o.request_id, None)
                    if self.metrics is not None and self.engine.last_stats is not None:
                        self.metrics.record_step(self.engine.last_stats, prefix_queries=kv.prefix_queries - queries, prefix_hits=kv.prefix_hits - hits)
                    self._cond.notify_all()  # drain() waits for the engine to empty
                now = time.monotonic()
                for output, stream in streams:
                    if stream is not None:
                        self._observe(stream, output, now)
                        stream.put(output)
        except BaseException as e:  # noqa: BLE001 - every waiting client must hear of it
            self.error = e
        with self._cond:
            streams, self._streams = list(self._streams.values()), {}
            self._cond.notify_all()
        for stream in streams:
            stream.put(self.error or EngineFailed("the server is shutting down"))

    def _observe(self, stream: RequestStream, output: RequestOutput, now: float) -> None:
        if output.new_token_ids:
            self.stats.generated(len(output.new_token_ids))
            if stream.first_token is None:
                stream.first_token = now
                self.stats.first_token(now - stream.arrival)
                if self.metrics is not None:
                    self.metrics.ttft.observe(now - stream.arrival)
            elif self.metrics is not None:
                self.metrics.itl.observe((now - stream.last_token) / len(output.new_token_ids))
            stream.last_token = now
        if output.finished:
            self.stats.request_done(first_token=stream.first_token, last_token=stream.last_token, output_tokens=output.num_output_tokens)
            if self.metrics is not None:
                self.metrics.finished(output.finish_reason or "abort", seconds=now - stream.arrival,
                                      prompt_tokens=output.num_prompt_tokens, output_tokens=output.num_output_tokens)

    def _publish_load(self) -> None:
        if self.metrics is not None:
            s = self.engine.scheduler
            self.metrics.set_load(running=s.num_running, waiting=s.num_waiting, kv_usage=s.kv.usage)
