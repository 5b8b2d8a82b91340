"""The operator's own Prometheus metrics: one series set per TrainingJob and per ServingPool,
plus reconcile costs.

Per-job values are read from the status the handlers just computed (the status is the
source of truth, so a restarted operator reports the same restart count, never zero) and
exposed by a custom collector, so a deleted job's series disappear at once.

Names follow ``shardwright_<object>_<measure>_<unit>`` with labels ``name`` and
``namespace``; the Grafana dashboard in the chart queries only names listed in
:data:`METRIC_NAMES` (a test checks).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from shardwright.operator.api import Phase, TrainingJobStatus
from shardwright.operator.api.servingpool import PoolPhase, ServingPoolStatus

#: Every series name this module exports (counters with their ``_total`` suffix).
METRIC_NAMES = (
    "shardwright_trainingjob_info",
    "shardwright_trainingjob_phase",
    "shardwright_trainingjob_restarts_total",
    "shardwright_trainingjob_generation",
    "shardwright_trainingjob_world_size",
    "shardwright_trainingjob_ready_ranks",
    "shardwright_trainingjob_step",
    "shardwright_trainingjob_tokens_per_second",
    "shardwright_trainingjob_loss_nats",
    "shardwright_trainingjob_eval_loss_nats",
    "shardwright_trainingjob_eval_perplexity",
    "shardwright_trainingjob_checkpoint_step",
    "shardwright_servingpool_phase",
    "shardwright_servingpool_replicas",
    "shardwright_operator_reconcile_seconds",
    "shardwright_operator_reconcile_errors_total",
)
_LABELS = ["name", "namespace"]


class Latest:
    """The latest status per (namespace, name), read on each scrape: a deleted object's
    series disappear at once."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._latest: dict[tuple[str, str], Any] = {}

    def _set(self, namespace: str, name: str, value: Any) -> None:
        with self._lock:
            self._latest[(namespace, name)] = value

    def forget(self, namespace: str, name: str) -> None:
        with self._lock:
            self._latest.pop((namespace, name), None)

    def snapshot(self) -> dict[tuple[str, str], Any]:
        with self._lock:
            return dict(self._latest)


class JobMetrics(Latest):
    """Latest status per job, rendered as metric families on each scrape."""

    def update(self, namespace: str, name: str, status: TrainingJobStatus, runtime: str) -> None:
        self._set(namespace, name, (status, runtime))

    def collect(self) -> Iterator[Metric]:
        jobs = self.snapshot()
        info = GaugeMetricFamily("shardwright_trainingjob_info", "One series per TrainingJob: plan and runtime.", labels=[*_LABELS, "runtime", "plan"])
        phase = GaugeMetricFamily("shardwright_trainingjob_phase", "1 for the job's current phase, 0 for the others.", labels=[*_LABELS, "phase"])
        restarts = CounterMetricFamily("shardwright_trainingjob_restarts", "Generations restarted after a failure (from status).", labels=_LABELS)
        gauges = {
            "generation": GaugeMetricFamily("shardwright_trainingjob_generation", "Current run generation.", labels=_LABELS),
            "world_size": GaugeMetricFamily("shardwright_trainingjob_world_size", "Ranks of the current generation.", labels=_LABELS),
            "ready_ranks": GaugeMetricFamily("shardwright_trainingjob_ready_ranks", "Ranks running now.", labels=_LABELS),
            "step": GaugeMetricFamily("shardwright_trainingjob_step", "Optimizer steps completed.", labels=_LABELS),
            "tokens_per_second": GaugeMetricFamily("shardwright_trainingjob_tokens_per_second", "Global training throughput.", labels=_LABELS),
            "loss": GaugeMetricFamily("shardwright_trainingjob_loss_nats", "Training loss of the last step.", labels=_LABELS),
        }
        checkpoint = GaugeMetricFamily("shardwright_trainingjob_checkpoint_step", "Step of the last committed checkpoint.", labels=_LABELS)
        evaluation = {
            "loss": GaugeMetricFamily("shardwright_trainingjob_eval_loss_nats", "Held-out loss of the last evaluation (spec.evaluation).", labels=_LABELS),
            "perplexity": GaugeMetricFamily("shardwright_trainingjob_eval_perplexity", "Held-out perplexity of the last evaluation.", labels=_LABELS),
        }
        for (namespace, name), (st, runtime) in sorted(jobs.items()):
            labels = [name, namespace]
            info.add_metric([*labels, runtime, st.plan or ""], 1)
            for p in Phase:
                phase.add_metric([*labels, str(p)], 1 if st.phase is p else 0)
            restarts.add_metric(labels, st.restarts)
            for field, family in gauges.items():
                if (value := getattr(st, field)) is not None:
                    family.add_metric(labels, value)
            if st.last_checkpoint is not None:
                checkpoint.add_metric(labels, st.last_checkpoint.step)
            if st.evaluation is not None:
                for field, family in evaluation.items():
                    family.add_metric(labels, getattr(st.evaluation, field))
        yield from (info, phase, restarts, *gauges.values(), checkpoint, *evaluation.values())


class PoolMetrics(Latest):
    """Latest status per ServingPool: its phase, and its replicas by role and state, which
    is how a rollout shows (``updated`` replicas run the current spec, the rest the old)."""

    #: The status counts a role's replicas are exported as, by ``state`` label.
    STATES = {"existing": "replicas", "ready": "ready_replicas", "routable": "routable_replicas", "updated": "updated_replicas"}

    def update(self, namespace: str, name: str, status: ServingPoolStatus) -> None:
        self._set(namespace, name, status)

    def collect(self) -> Iterator[Metric]:
        pools = self.snapshot()
        phase = GaugeMetricFamily("shardwright_servingpool_phase", "1 for the pool's current phase, 0 for the others.", labels=[*_LABELS, "phase"])
        replicas = GaugeMetricFamily("shardwright_servingpool_replicas", "Replicas of a role: existing, ready, routable, and updated (on the current spec).",
                                     labels=[*_LABELS, "role", "state"])
        for (namespace, name), st in sorted(pools.items()):
            for p in PoolPhase:
                phase.add_metric([name, namespace, str(p)], 1 if st.phase is p else 0)
            for role in st.roles:
                for state, field in self.STATES.items():
                    replicas.add_metric([name, namespace, str(role.name), state], getattr(role, field))
        yield from (phase, replicas)


class OperatorMetrics:
    """The registry the operator serves: per-job families and reconcile costs."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.jobs = JobMetrics()
        self.registry.register(self.jobs)
        self.pools = PoolMetrics()
        self.registry.register(self.pools)
        self.reconcile_seconds = Histogram(
            "shardwright_operator_reconcile_seconds", "Wall time of one reconcile pass of one job.",
            registry=self.registry, buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
        )
        self.reconcile_errors = Counter(
            "shardwright_operator_reconcile_errors", "Reconcile passes that ended in an API error.",
            ["reason"], registry=self.registry,
        )

    def serve(self, port: int, addr: str = "0.0.0.0") -> None:
        """Serve ``/metrics`` on ``port`` from a daemon thread."""
        start_http_server(port, addr=addr, registry=self.registry)
