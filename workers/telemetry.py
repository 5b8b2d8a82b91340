"""Per-rank Prometheus metrics and a JSON ``/status``, served on one port.

``/metrics``  Prometheus text format, names ``shardwright_rank_<measure>_<unit>``;
``/status``   JSON: step, loss, throughput, per-rank step times (rank 0 knows all of them),
              last committed checkpoint, last held-out evaluation, state (``running``, ``complete``, ``stopped``);
``/healthz``  200 while the server lives;
``POST /control``  JSON ``{"dataShares": [...]}``: new work shares for the data-parallel
              ranks (rank 0 passes them to every rank in the next step-facts all-reduce;
              ``/status`` shows ``dataShares`` and ``sharesSinceStep`` once they apply).

``/status`` and ``/control`` answer only a request carrying the job's token
(``Authorization: Bearer <token>``, compared in constant time), else 401: whoever reaches
the pod's IP could otherwise read the job or steer its data shares. ``/healthz`` (no data)
and ``/metrics`` stay open: probes and Prometheus scrape them, and they hold figures only
(docs/operator.md, "Data plane security").

The train loop calls ``Telemetry.record_step`` once per step; serving runs on a daemon
thread and never blocks training.
"""

from __future__ import annotations

import hmac
import json
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST

disable_created_metrics()  # *_created series only add noise to a rank's scrape

#: Paths that answer without the job's token (every other one asks for it).
OPEN = ("/healthz", "/metrics")
#: Largest ``/control`` body read (bytes; a list of shares takes a few hundred), and the
#: seconds it may take to arrive: a client that stalls or lies gets 4xx, not a thread for ever.
MAX_BODY, BODY_TIMEOUT = 1 << 20, 10.0
STEP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class Telemetry:
    def __init__(self, *, job: str, namespace: str, rank: int, world_size: int, generation: int, layout: str, total_steps: int) -> None:
        self.registry = CollectorRegistry()
        labels = {"name": job, "namespace": namespace, "rank": str(rank)}
        names = list(labels)

        def make(cls, name, doc, **kw):
            return cls(name, doc, names, registry=self.registry, **kw).labels(**labels)

        self.step_seconds = make(Histogram, "shardwright_rank_step_seconds", "Wall time of one optimizer step.", buckets=STEP_BUCKETS)
        self.steps = make(Counter, "shardwright_rank_steps_total", "Optimizer steps completed by this rank process.")
        self.tokens = make(Counter, "shardwright_rank_tokens_total", "Tokens this rank trained on.")
        self.loss = make(Gauge, "shardwright_rank_loss_nats", "Global mean training loss of the last step.")
        self.throughput = make(Gauge, "shardwright_rank_tokens_per_second", "Global tokens per second over the last steps.")
        self.step = make(Gauge, "shardwright_rank_step", "Optimizer step this rank has completed.")
        self.eval_loss = make(Gauge, "shardwright_rank_eval_loss_nats", "Held-out mean token cross-entropy of the last evaluation.")
        self.eval_perplexity = make(Gauge, "shardwright_rank_eval_perplexity", "exp of the held-out loss of the last evaluation.")
        self.checkpoint_step = make(Gauge, "shardwright_rank_checkpoint_step", "Step of the last committed checkpoint.")
        self.checkpoint_stall = make(Histogram, "shardwright_rank_checkpoint_stall_seconds", "Training time a checkpoint takes from the step loop (the host snapshot when asynchronous).", buckets=STEP_BUCKETS)
        self.sections = Histogram(
            "shardwright_rank_section_seconds", "Seconds of one step this rank spent in a section: data, forward, backward, optimizer, wait (blocked on peers).",
            [*names, "section"], registry=self.registry, buckets=STEP_BUCKETS,
        )
        self._labels = labels
        self.score = make(Gauge, "shardwright_rank_straggler_score", "This rank's relative speed: fastest rank's median per-sample compute / this rank's (1 = fastest; the operator flags below its threshold).")
        info = Gauge("shardwright_rank_info", "Generation and layout of this rank.", [*names, "generation", "layout"], registry=self.registry)
        info.labels(**labels, generation=str(generation), layout=layout).set(1)

        self._lock = threading.Lock()
        self._status: dict[str, Any] = {
            "job": job, "namespace": namespace, "rank": rank, "worldSize": world_size,
            "generation": generation, "layout": layout, "totalSteps": total_steps,
            "state": "starting", "step": 0, "loss": None, "tokensPerSecond": None,
            "stepSeconds": [], "lastCheckpoint": None, "time": time.time(),
            "dataShares": None, "sharesSinceStep": None, "sections": [], "stepTimings": [], "evaluation": None,
        }
        self._server: ThreadingHTTPServer | None = None
        self._shares: list[float] | None = None

    # ------------------------------------------------------------------ recording

    def record_step(self, *, step: int, loss: float, seconds: float, tokens: int, tokens_per_second: float, step_seconds: list[float], checkpoint_stall: float | None = None) -> None:
        self.step_seconds.observe(seconds)
        if checkpoint_stall is not None:
            self.checkpoint_stall.observe(checkpoint_stall)
        self.steps.inc()
        self.tokens.inc(tokens)
        self.loss.set(loss)
        self.throughput.set(tokens_per_second)
        self.step.set(step)
        self.update(state="running", step=step, loss=loss, tokensPerSecond=tokens_per_second, stepSeconds=step_seconds)

    def record_evaluation(self, *, step: int, loss: float, perplexity: float) -> None:
        """A held-out evaluation (every rank holds the same figures; rank 0's reach the status)."""
        self.eval_loss.set(loss)
        self.eval_perplexity.set(perplexity)
        self.update(evaluation={"step": step, "loss": loss, "perplexity": perplexity})

    def record_sections(self, sections: dict[str, float]) -> None:
        for name, seconds in sections.items():
            self.sections.labels(**self._labels, section=name).observe(seconds)

    def record_score(self, score: float) -> None:
        self.score.set(score)

    def offer_shares(self, shares: list[float]) -> None:
        """New work shares from the controller (``POST /control``); the latest offer wins."""
        with self._lock:
            self._shares = [float(x) for x in shares]

    def take_shares(self) -> list[float] | None:
        with self._lock:
            shares, self._shares = self._shares, None
            return shares

    def record_checkpoint(self, manifest: dict[str, Any]) -> None:
        self.checkpoint_step.set(manifest["step"])
        self.update(lastCheckpoint={k: manifest[k] for k in ("step", "path", "worldSize", "layout")})

    def update(self, **fields: Any) -> None:
        with self._lock:
            self._status.update(fields, time=time.time())

    def status(self) -> dict[str, Any]:
        with self._lock:
            return dict(self._status)

    #: What the termination message carries: enough for the operator to resume and report
    #: without reaching the rank (Kubernetes keeps at most 4096 bytes of it).
    FINAL_FIELDS = ("generation", "state", "step", "loss", "tokensPerSecond", "lastCheckpoint", "resumedFrom", "rejectedCheckpoints", "evaluation")

    def termination_message(self) -> str:
        """The rank's final report as compact JSON, the shape of ``/status``'s own fields."""
        status = self.status()
        return json.dumps({k: status[k] for k in self.FINAL_FIELDS if status.get(k) is not None}, separators=(",", ":"))[:4096]

    def metrics_text(self) -> str:
        """What ``/metrics`` answers now (also returned by a finished run: its server goes)."""
        return generate_latest(self.registry).decode()

    # ------------------------------------------------------------------ serving

    def serve(self, port: int, host: str = "0.0.0.0", *, token: str) -> int:
        """Start serving on ``port`` (0: any free port); returns the bound port. ``token``
        guards ``/status`` and ``/control``."""
        telemetry = self

        class Handler(BaseHTTPRequestHandler):
            timeout = BODY_TIMEOUT  # one request per connection (HTTP/1.0): no idle keep-alive to cut

            def refused(self) -> bool:
                """Answer 401 to a path not ``OPEN`` without the token; True when it did."""
                if self.path in OPEN or authorized(self.headers.get("Authorization"), token):
                    return False
                self.send_response(401)
                self.send_header("WWW-Authenticate", 'Bearer realm="shardwright-rank"')
                self.send_header("Content-Length", "0")
                self.end_headers()
                return True

            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                if self.refused():
                    return
                if self.path == "/metrics":
                    body, ctype = telemetry.metrics_text().encode(), CONTENT_TYPE_LATEST
                elif self.path == "/status":
                    body, ctype = json.dumps(telemetry.status()).encode(), "application/json"
                elif self.path == "/healthz":
                    body, ctype = b"ok", "text/plain"
                else:
                    self.send_error(404, f"no such path: GET {self.path}")
                    return
                self.send_response(200)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                if self.refused():
                    return
                if self.path != "/control":
                    self.send_error(404, f"no such path: POST {self.path}")
                    return
                given = self.headers.get("Content-Length") or "0"
                if not (given.isascii() and given.isdigit()) or int(given) > MAX_BODY:
                    self.send_error(413 if given.isdigit() else 400, f"Content-Length must be an integer from 0 to {MAX_BODY}, got {given[:40]!r}")
                    return
                try:
                    raw = self.rfile.read(int(given))
                except TimeoutError:
                    raw = None
                if raw is None or len(raw) < int(given):
                    self.send_error(408 if raw is None else 400, f"the body {'did not arrive' if raw is None else 'ended'} before its {given} bytes")
                    return
                try:
                    body = json.loads(raw or b"{}")
                except (ValueError, RecursionError) as e:
                    self.send_error(400, f"the body is not JSON ({e})")
                    return
                shares = body.get("dataShares") if isinstance(body, dict) else None
                if not (isinstance(shares, list) and shares and all(isinstance(x, int | float) and not isinstance(x, bool) and 0 < x <= sys.float_info.max for x in shares)):
                    self.send_error(400, f"dataShares must be a non-empty list of finite positive numbers, got {json.dumps(shares)[:100]}")
                    return
                telemetry.offer_shares(shares)
                self.send_response(202)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
                """Errors as JSON ``{"error": message}``, the standard library's too (a method
                with no handler, 501 there, is 405 here)."""
                if code == 501:
                    code, message = 405, f"method {self.command} is not allowed; GET /metrics, /status, /healthz or POST /control"
                if self.request_version == "HTTP/0.9":  # a line that is no HTTP/1 request still gets a status line
                    self.request_version = "HTTP/1.0"
                body = json.dumps({"error": message or self.responses.get(code, ("Error",))[0]}).encode()
                self.close_connection = True
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer((host, port), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, name="telemetry", daemon=True).start()
        return self._server.server_address[1]

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


def authorized(header: str | None, token: str) -> bool:
    """Whether an ``Authorization`` header is ``Bearer <token>``; constant-time, so the time
    of a refusal tells nothing of how much of a guess was right."""
    scheme, _, given = (header or "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), token.encode())
