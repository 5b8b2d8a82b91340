"""A replica's Prometheus metrics: vLLM's names where they mean the same, ``shardwright_`` otherwise.

Users' dashboards and autoscalers (KEDA on ``vllm:num_requests_waiting``, production-stack's
Grafana board) already know vLLM's names, so the built-in engine exports those with the
``model_name`` label: requests running and waiting, KV cache usage (a fraction, as vLLM's
``_perc`` gauge is), TTFT, inter-token and end-to-end latency, token and request counters,
prefix-cache queries and hits (tokens), preemptions. What vLLM has no name for follows
DESIGN.md's ``shardwright_<object>_<measure>_<unit>`` with labels ``name`` (the pool),
``namespace`` and ``replica``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

if TYPE_CHECKING:
    from .engine import StepStats

disable_created_metrics()

#: vLLM's TTFT buckets (seconds).
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0)
#: vLLM's inter-token latency buckets (seconds).
ITL_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0)
E2E_BUCKETS = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0)
ITERATION_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
CONTENT_TYPE = CONTENT_TYPE_LATEST


class ServingMetrics:
    def __init__(self, *, model_name: str, pool: str, namespace: str, replica: int) -> None:
        self.registry = r = CollectorRegistry()
        model = {"model_name": model_name}

        def vllm(cls, name, doc, **kw):
            return cls(name, doc, list(model), registry=r, **kw).labels(**model)

        self.running = vllm(Gauge, "vllm:num_requests_running", "Number of requests in model execution batches.")
        self.waiting = vllm(Gauge, "vllm:num_requests_waiting", "Number of requests waiting to be processed.")
        self.kv_usage = vllm(Gauge, "vllm:kv_cache_usage_perc", "KV-cache usage. 1 means 100 percent usage.")
        self.ttft = vllm(Histogram, "vllm:time_to_first_token_seconds", "Histogram of time to first token in seconds.", buckets=TTFT_BUCKETS)
        self.itl = vllm(Histogram, "vllm:inter_token_latency_seconds", "Histogram of inter-token latency in seconds.", buckets=ITL_BUCKETS)
        self.e2e = vllm(Histogram, "vllm:e2e_request_latency_seconds", "Histogram of e2e request latency in seconds.", buckets=E2E_BUCKETS)
        self.prompt_tokens = vllm(Counter, "vllm:prompt_tokens", "Number of prefill tokens processed.")
        self.generation_tokens = vllm(Counter, "vllm:generation_tokens", "Number of generation tokens processed.")
        self.prefix_queries = vllm(Counter, "vllm:prefix_cache_queries", "Prefix cache queries, in terms of number of queried tokens.")
        self.prefix_hits = vllm(Counter, "vllm:prefix_cache_hits", "Prefix cache hits, in terms of number of cached tokens.")
        self.preemptions = vllm(Counter, "vllm:num_preemptions", "Cumulative number of preemption from the engine.")
        self._success = Counter("vllm:request_success", "Count of successfully processed requests.", [*model, "finished_reason"], registry=r)
        self._model = model

        ours = {"name": pool, "namespace": namespace, "replica": str(replica)}
        names = list(ours)
        self.iteration_seconds = Histogram(
            "shardwright_replica_iteration_seconds", "Wall time of one engine iteration (schedule, forward, sample).",
            names, registry=r, buckets=ITERATION_BUCKETS).labels(**ours)
        self.scheduled_tokens = Counter(
            "shardwright_replica_scheduled_tokens", "Tokens run through the model (prefill chunks and decodes).", names, registry=r).labels(**ours)
        self.prefill_chunks = Counter(
            "shardwright_replica_prefill_chunks", "Prefill chunks scheduled (a prompt longer than the budget takes several).", names, registry=r).labels(**ours)
        self._rejected = Counter(
            "shardwright_replica_requests_rejected", "Requests answered with an error, by HTTP status.", [*names, "status"], registry=r)
        self._ours = ours

    def record_step(self, stats: StepStats, *, prefix_queries: int, prefix_hits: int) -> None:
        """After each iteration; the prefix counts are this iteration's increments."""
        self.iteration_seconds.observe(stats.seconds)
        self.scheduled_tokens.inc(stats.num_scheduled_tokens)
        self.prefill_chunks.inc(stats.num_prefill_chunks)
        self.preemptions.inc(stats.num_preempted)
        self.prefix_queries.inc(prefix_queries)
        self.prefix_hits.inc(prefix_hits)
        self.set_load(running=stats.num_running, waiting=stats.num_waiting, kv_usage=stats.kv_usage)

    def set_load(self, *, running: int, waiting: int, kv_usage: float) -> None:
        self.running.set(running)
        self.waiting.set(waiting)
        self.kv_usage.set(kv_usage)

    def finished(self, reason: str, *, seconds: float, prompt_tokens: int, output_tokens: int) -> None:
        self._success.labels(**self._model, finished_reason=reason).inc()
        self.e2e.observe(seconds)
        self.prompt_tokens.inc(prompt_tokens)
        self.generation_tokens.inc(output_tokens)

    def rejected(self, status: int) -> None:
        self._rejected.labels(**self._ours, status=str(status)).inc()

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
