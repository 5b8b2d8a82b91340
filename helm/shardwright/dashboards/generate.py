"""The chart's Grafana dashboards as code (grafana-foundation-sdk), written next to this file.

    .venv/bin/python helm/shardwright/dashboards/generate.py

writes ``shardwright-training.json`` and ``shardwright-serving.json``, which
``templates/dashboard.yaml`` puts in the dashboards ConfigMap. Edit the panels here, never the JSON: a test fails when the two
differ (tests/observability/test_dashboards_code.py), and another evaluates every query in
a real Prometheus scraping a real run (test_dashboards_prometheus.py, and
test_serving_dashboard_prometheus.py for a real ``shardwright serve`` under load).
"""

from __future__ import annotations

import json
from pathlib import Path

from grafana_foundation_sdk.builders import dashboard, prometheus, timeseries
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models.dashboard import DataSourceRef

HERE = Path(__file__).resolve().parent
#: Every panel queries the data source the dashboard's variable picks.
DATASOURCE = DataSourceRef(type_val="prometheus", uid="${datasource}")
JOB = "{{namespace}}/{{name}}"
RANK = "{{namespace}}/{{name}} rank {{rank}}"

#: (title, PromQL, legend, unit) in reading order, two panels a row: the job as the operator
#: sees it, then its ranks, then the operator itself.
TRAINING_PANELS = [
    ("Phase by job", "sum by (namespace, name, phase) (shardwright_trainingjob_phase == 1)", "{{namespace}}/{{name}} {{phase}}", "none"),
    ("Step", "shardwright_trainingjob_step", JOB, "none"),
    ("Tokens per second", "shardwright_trainingjob_tokens_per_second", JOB, "short"),
    ("Loss", "shardwright_trainingjob_loss_nats", JOB, "none"),
    ("Held-out loss (spec.evaluation)", "shardwright_trainingjob_eval_loss_nats", JOB, "none"),
    ("Restarts (last hour)", "increase(shardwright_trainingjob_restarts_total[1h])", JOB, "none"),
    ("Ready ranks / world size", "shardwright_trainingjob_ready_ranks / shardwright_trainingjob_world_size", JOB, "percentunit"),
    ("Generation", "shardwright_trainingjob_generation", JOB, "none"),
    ("Last checkpoint step", "shardwright_trainingjob_checkpoint_step", JOB, "none"),
    ("Rank step time p90", "histogram_quantile(0.9, sum by (name, namespace, rank, le) (rate(shardwright_rank_step_seconds_bucket[5m])))", RANK, "s"),
    ("Rank throughput", "shardwright_rank_tokens_per_second", RANK, "short"),
    ("Rank step", "shardwright_rank_step", RANK, "none"),
    ("Reconcile time p99", "histogram_quantile(0.99, sum by (le) (rate(shardwright_operator_reconcile_seconds_bucket[5m])))", "p99", "s"),
    ("Reconcile errors", "sum by (reason) (rate(shardwright_operator_reconcile_errors_total[5m]))", "{{reason}}", "reqps"),
]


POOL = "{{namespace}}/{{name}}"
MODEL = "{{model_name}}"
REPLICA = "{{name}} replica {{replica}}"

#: The serving pool: its replicas as the operator sees them (by role and revision during a
#: rollout), then the replicas' own metrics under vLLM's names (model_name is the pool's
#: served name), then the ones vLLM has no name for.
SERVING_PANELS = [
    ("Replicas by role and state (updated: on the current spec)", "sum by (namespace, name, role, state) (shardwright_servingpool_replicas)",
     "{{name}} {{role}} {{state}}", "none"),
    ("Phase by pool", "sum by (namespace, name, phase) (shardwright_servingpool_phase == 1)", "{{namespace}}/{{name}} {{phase}}", "none"),
    ("Requests per second", "sum by (model_name) (rate(vllm:request_success_total[1m]))", MODEL, "reqps"),
    ("Generated tokens per second", "sum by (model_name) (rate(vllm:generation_tokens_total[1m]))", MODEL, "short"),
    ("Time to first token p99", "histogram_quantile(0.99, sum by (model_name, le) (rate(vllm:time_to_first_token_seconds_bucket[1m])))", MODEL, "s"),
    ("Time to first token p50", "histogram_quantile(0.5, sum by (model_name, le) (rate(vllm:time_to_first_token_seconds_bucket[1m])))", MODEL, "s"),
    ("Time per output token p99", "histogram_quantile(0.99, sum by (model_name, le) (rate(vllm:inter_token_latency_seconds_bucket[1m])))", MODEL, "s"),
    ("Time per output token p50", "histogram_quantile(0.5, sum by (model_name, le) (rate(vllm:inter_token_latency_seconds_bucket[1m])))", MODEL, "s"),
    ("Requests waiting (queue)", "sum by (model_name) (vllm:num_requests_waiting)", MODEL, "none"),
    ("Requests running", "sum by (model_name) (vllm:num_requests_running)", MODEL, "none"),
    ("KV cache usage by replica", "max by (model_name, instance) (vllm:kv_cache_usage_perc)", "{{instance}}", "percentunit"),
    ("Prefix cache hit rate", "sum by (model_name) (rate(vllm:prefix_cache_hits_total[5m])) / sum by (model_name) (rate(vllm:prefix_cache_queries_total[5m]))",
     MODEL, "percentunit"),
    ("Preemptions per second", "sum by (model_name) (rate(vllm:num_preemptions_total[5m]))", MODEL, "reqps"),
    ("Engine iteration p99 by replica", "histogram_quantile(0.99, sum by (namespace, name, replica, le) (rate(shardwright_replica_iteration_seconds_bucket[1m])))",
     REPLICA, "s"),
    ("Requests refused by status", "sum by (namespace, name, status) (rate(shardwright_replica_requests_rejected_total[5m]))", "{{name}} {{status}}", "reqps"),
]


def panel(number: int, title: str, expr: str, legend: str, unit: str) -> timeseries.Panel:
    query = prometheus.Dataquery().ref_id("A").expr(expr).legend_format(legend)
    return timeseries.Panel().id(number).title(title).datasource(DATASOURCE).unit(unit).height(8).span(12).with_target(query)


def board(title: str, uid: str, panels: list[tuple[str, str, str, str]], since: str) -> dashboard.Dashboard:
    built = (
        dashboard.Dashboard(title)
        .uid(uid)
        .tags(["shardwright"])
        .time(since, "now")
        .refresh("30s")
        .with_variable(dashboard.DatasourceVariable("datasource").label("Data source").type("prometheus"))
    )
    for number, spec in enumerate(panels, start=1):
        built = built.with_panel(panel(number, *spec))
    return built


def training() -> dashboard.Dashboard:
    return board("Shardwright training", "shardwright-training", TRAINING_PANELS, "now-6h")


def serving() -> dashboard.Dashboard:
    return board("Shardwright serving", "shardwright-serving", SERVING_PANELS, "now-1h")


#: File name in this folder -> its dashboard.
DASHBOARDS = {"shardwright-training.json": training, "shardwright-serving.json": serving}


def render(build) -> str:
    return json.dumps(build().build(), cls=JSONEncoder, indent=1, sort_keys=True) + "\n"


def main() -> None:
    for name, build in DASHBOARDS.items():
        (HERE / name).write_text(render(build))
        print(f"wrote {HERE / name}")


if __name__ == "__main__":
    main()
