"""One replica's OpenAI-compatible HTTP server (stdlib ``http.server``, one thread per connection).

``POST /v1/completions``       prompt as text or token ids; ``stream`` for server-sent events
``POST /v1/chat/completions``  messages through the byte tokenizer's chat layout; streaming too
``GET  /v1/models``            the one served model
``GET  /health``               200 once warmed up and while the engine runs; 503 when draining or failed
``GET  /metrics``              Prometheus text (``metrics.ServingMetrics``)
``GET  /status``               JSON for the pool core: load, KV use, TTFT/TPOT p50/p99, tokens/s

Bad requests get OpenAI-style JSON errors (``protocol.APIError``) and change nothing else.
The replica is warmed (one token generated) before it listens, so a replica that answers
``/health`` can serve at once. On SIGTERM it drains: new requests get 503 (a router sends
them elsewhere) while the running ones finish, up to ``drain_timeout_s``. ``python -m shardwright.workers.serve --config FILE`` runs one.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

from . import hfmodel, httpbase, protocol
from .config import ServeConfig
from .engine import Engine
from .engine_thread import Draining, EngineFailed, EngineThread, RequestStream
from .metrics import CONTENT_TYPE, ServingMetrics
from .request import SamplingParams
from .tokenizer import TextStream

#: Environment variable that may carry the JSON ``ServeConfig`` instead of ``--config``.
CONFIG_ENV = "SHARDWRIGHT_SERVE_CONFIG"


class ReplicaServer:
    """The engine thread plus the HTTP server; ``start()`` / ``stop()`` or a ``with`` block."""

    def __init__(self, config: ServeConfig, engine: Engine | None = None) -> None:
        self.config = config
        self.engine = engine or Engine.from_config(config)
        if config.iteration_delay_s:
            self.engine.step = _slowed(self.engine.step, config.iteration_delay_s)  # type: ignore[method-assign]
        model = self.engine.runner.model.cfg  # a model.from's config.json, read when its weights loaded
        self.tokenizer = hfmodel.tokenizer_for(model.vocab_size, model.source)
        self.model = protocol.ModelInfo(config.model_name, self.engine.config.max_model_len, self.tokenizer)
        self.metrics = ServingMetrics(model_name=config.model_name, pool=config.pool, namespace=config.namespace, replica=config.replica)
        self.engine_thread = EngineThread(self.engine, self.metrics)
        self.httpd = httpbase.Server((config.host, config.port), _Handler)
        self.httpd.replica = self  # type: ignore[attr-defined]
        self.created = int(time.time())
        self._serving: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> ReplicaServer:
        self.engine.generate([[0]], SamplingParams(max_tokens=1))  # warm up before listening
        self.engine.kv.reset_stats()  # count clients' prompts only
        self.engine_thread.start()
        self._serving = threading.Thread(target=self.httpd.serve_forever, name="http", daemon=True)
        self._serving.start()
        return self

    def drain(self, timeout: float) -> bool:
        """Take no new requests, let the running ones finish; True if all did within ``timeout`` s."""
        return self.engine_thread.drain(timeout)

    def status(self) -> dict[str, Any]:
        thread, scheduler = self.engine_thread, self.engine.scheduler
        state = "failed" if not thread.healthy else "draining" if thread.draining else "serving"
        kv = scheduler.kv
        return {
            "model": self.model.name, "pool": self.config.pool, "namespace": self.config.namespace, "replica": self.config.replica,
            "state": state, "running": scheduler.num_running, "waiting": scheduler.num_waiting, "kvCacheUsage": kv.usage,
            "prefixHitRate": kv.prefix_hits / kv.prefix_queries if kv.prefix_queries else None,
            "uptimeSeconds": time.time() - self.created,
        } | thread.stats.summary()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.engine_thread.stop()

    def __enter__(self) -> ReplicaServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _slowed(step, seconds: float):
    def slow_step():
        time.sleep(seconds)
        return step()

    return slow_step


class _Handler(httpbase.OpenAIHandler):
    server_version = "shardwright-serve"

    @property
    def replica(self) -> ReplicaServer:
        return self.server.replica  # type: ignore[attr-defined]

    def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
        path = self.route
        if path == "/health":
            thread = self.replica.engine_thread
            if not thread.healthy:
                self._json(503, {"status": f"engine stopped: {thread.error}"})
            else:
                self._json(503 if thread.draining else 200, {"status": "draining" if thread.draining else "ok"})
        elif path == "/status":
            self._json(200, self.replica.status())
        elif path == "/metrics":
            self._send(200, self.replica.metrics.exposition(), CONTENT_TYPE)
        elif path == "/v1/models":
            self._json(200, httpbase.model_list(self.replica.model, self.replica.created))
        else:
            self._error(protocol.APIError(404, f"no such route: GET {path}", type="not_found_error"))

    def do_POST(self) -> None:  # noqa: N802 - the stdlib's name
        path = self.route
        parse = httpbase.PARSERS.get(path)
        try:
            raw = self._body()  # read first: an unread body would be taken for the next request
            if parse is None:
                raise protocol.APIError(404, f"no such route: POST {path}", type="not_found_error")
            req = parse(protocol.parse_json(raw), self.replica.model)
            stream = self.replica.engine_thread.submit(req.prompt_token_ids, req.params, "cmpl" if req.kind == "completion" else "chatcmpl")
        except protocol.APIError as e:
            return self._error(e)
        except ValueError as e:  # the engine's own checks, should parsing have let one through
            return self._error(protocol.APIError(400, str(e)))
        except EngineFailed as e:
            return self._error(protocol.APIError(503, str(e), type="server_error"))
        except Draining as e:
            return self._error(protocol.APIError(503, str(e), type="server_error", code="draining"))
        if req.stream:
            self._stream(req, stream)
        else:
            self._complete(req, stream)

    # ------------------------------------------------------------------ generation

    def _complete(self, req: protocol.GenerationRequest, stream: RequestStream) -> None:
        text, tokens, output = TextStream(self.replica.tokenizer, req.stop), [], None
        try:
            for output in stream:
                tokens += output.new_token_ids
                text.feed(output.new_token_ids, final=output.finished)
                if text.stopped:
                    self.replica.engine_thread.abort(stream.request_id, "stop")
                    break
        except EngineFailed as e:
            return self._error(protocol.APIError(500, f"the engine failed: {e}", type="server_error"))
        finish = "stop" if text.stopped else output.finish_reason
        choice = protocol.choice(req, text.text, tokens, finish, delta=False)
        usage = protocol.usage(stream.num_prompt_tokens, len(tokens), output.num_cached_tokens)
        self._json(200, protocol.envelope(req, stream.request_id, int(time.time()), self.replica.model.name, [choice], chunk=False, usage=usage))

    def _stream(self, req: protocol.GenerationRequest, stream: RequestStream) -> None:
        self._start_events()
        created, name = int(time.time()), self.replica.model.name
        text, count, first, output, last = TextStream(self.replica.tokenizer, req.stop), 0, True, None, []
        try:
            for output in stream:
                count += len(output.new_token_ids)
                delta = text.feed(output.new_token_ids, final=output.finished)
                finish = "stop" if text.stopped else output.finish_reason
                if text.stopped:
                    self.replica.engine_thread.abort(stream.request_id, "stop")
                if delta or finish or first or req.return_token_ids:
                    choice = protocol.choice(req, delta, list(output.new_token_ids), finish, delta=True, first=first)
                    event = protocol.envelope(req, stream.request_id, created, name, [choice], chunk=True)
                    if finish:  # the last event goes out with the stream's end, in one write
                        last.append(event)
                    else:
                        self._event(event)
                    first = False
                if finish:
                    break
            if req.include_usage and output is not None:
                usage = protocol.usage(stream.num_prompt_tokens, count, output.num_cached_tokens)
                last.append(protocol.envelope(req, stream.request_id, created, name, [], chunk=True, usage=usage))
            self._done(last)
        except (BrokenPipeError, ConnectionResetError):
            self.replica.engine_thread.abort(stream.request_id)  # the client left: free its blocks
        except EngineFailed as e:
            self._error_event(protocol.APIError(500, f"the engine failed: {e}", type="server_error"))

    def _error(self, error: protocol.APIError) -> None:
        self.replica.metrics.rejected(error.status)
        super()._error(error)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m shardwright.workers.serve", description="Serve the built-in model over OpenAI's HTTP API.")
    parser.add_argument("--config", type=Path, help=f"ServeConfig JSON file (default: ${CONFIG_ENV})")
    parser.add_argument("--port", type=int, help="listen here instead of the config's port")
    args = parser.parse_args(argv)
    raw = args.config.read_text() if args.config else os.environ.get(CONFIG_ENV)
    if not raw:
        parser.error(f"give --config FILE or set {CONFIG_ENV}")
    config = ServeConfig.model_validate_json(raw)
    if args.port is not None:
        config = config.model_copy(update={"port": args.port})
    import torch

    torch.set_num_threads(config.threads)
    server = ReplicaServer(config).start()
    if config.port_file:
        Path(config.port_file).write_text(str(server.httpd.server_address[1]))
    print(f"serving {config.model_name} at {server.url}", flush=True)
    done = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: done.set())
    done.wait()
    if not server.drain(config.drain_timeout_s):
        print(f"drain timeout: {server.engine.scheduler.num_running + server.engine.scheduler.num_waiting} requests cut off", flush=True)
    server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
