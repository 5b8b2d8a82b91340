"""The chart's Grafana dashboards as code (grafana-foundation-sdk), written next to this file.

    .venv/bin/python helm/shardwright/dashboards/generate.py

writes ``shardwright-training.json``, which ``templates/dashboard.yaml`` puts in the
dashboards ConfigMap. Edit the panels here, never the JSON: a test fails when the two
differ (tests/observability/test_dashboards_code.py), and another evaluates every query in
a real Prometheus scraping a real run (test_dashboards_prometheus.py).
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


def panel(number: int, title: str, expr: str, legend: str, unit: str) -> timeseries.Panel:
    query = prometheus.Dataquery().ref_id("A").expr(expr).legend_format(legend)
    return timeseries.Panel().id(number).title(title).datasource(DATASOURCE).unit(unit).height(8).span(12).with_target(query)


def training() -> dashboard.Dashboard:
    board = (
        dashboard.Dashboard("Shardwright training")
        .uid("shardwright-training")
        .tags(["shardwright"])
        .time("now-6h", "now")
        .refresh("30s")
        .with_variable(dashboard.DatasourceVariable("datasource").label("Data source").type("prometheus"))
    )
    for number, spec in enumerate(TRAINING_PANELS, start=1):
        board = board.with_panel(panel(number, *spec))
    return board


#: File name in this folder -> its dashboard.
DASHBOARDS = {"shardwright-training.json": training}


def render(build) -> str:
    return json.dumps(build().build(), cls=JSONEncoder, indent=1, sort_keys=True) + "\n"


def main() -> None:
    for name, build in DASHBOARDS.items():
        (HERE / name).write_text(render(build))
        print(f"wrote {HERE / name}")


if __name__ == "__main__":
    main()
