"""Every panel of the chart's serving dashboard, evaluated by a real Prometheus (Debian's
package) scraping a real ``shardwright serve`` of examples/tiny-serve.yaml under load.

Prometheus scrapes, every second, both replicas' ``/metrics`` (their URLs from the pool's
``replicas.json``) and the operator's pool metrics (``operator/metrics.py``'s collector, fed
with the pool's ``status.json`` as the Kubernetes backend will feed it). Clients stream
completions through the router, some prompts repeated (prefix-cache hits), and each replica
refuses one malformed request (the refusals panel). Each panel query then goes through
Prometheus' HTTP API and must return at least one series, with the labels the panel groups
by and the pool's name (``name``, or ``model_name`` for vLLM's metrics).
"""

from __future__ import annotations

import json
import math
import threading
import time

import pytest
import yaml
from prometheus_client import start_http_server
from pydantic import ValidationError

from shardwright.operator.api.servingpool import ServingPoolStatus
from shardwright.operator.metrics import OperatorMetrics
from tests.observability.prom import ROOT, Prometheus, expected_labels, free_port, panels, table
from tests.serving import http
from tests.serving.serve_process import serving

POOL = "prom-serve"
BOARD = "shardwright-serving.json"

pytestmark = pytest.mark.slow


def problem(expr: str, series: list[dict]) -> str | None:
    """What is wrong with a panel's result, or None: series with a number, each with the
    labels the panel groups by and the pool's name."""
    if not series:
        return f"{expr} returned no series"
    if all(math.isnan(float(s["value"][1])) for s in series):
        return f"{expr} returned no number: {series}"
    for s in series:
        labels = s["metric"]
        if not expected_labels(expr) <= set(labels) or POOL not in (labels.get("name"), labels.get("model_name")):
            return f"{expr}: {labels} lacks {sorted(expected_labels(expr))} or the pool's name"
    return None


def test_every_serving_panel_returns_series_from_a_pool_under_load(tmp_path, capsys):
    assert panels(BOARD), "the chart ships a serving dashboard"
    prom = Prometheus(tmp_path).start()
    pool = yaml.safe_load((ROOT / "examples" / "tiny-serve.yaml").read_text())
    pool["metadata"]["name"] = POOL
    metrics = OperatorMetrics()
    exporter_port = free_port()
    exporter, _ = start_http_server(exporter_port, addr="127.0.0.1", registry=metrics.registry)
    stopping = threading.Event()
    results: dict[str, list[dict]] = {}
    try:
        with serving(tmp_path, pool, [], routable=2) as served:
            replicas = json.loads((served.workdir / "replicas.json").read_text())["replicas"]
            ports = {int(r["url"].rsplit(":", 1)[1]) for r in replicas}
            prom.targets(ports | {exporter_port})
            for r in replicas:  # one refusal each: a prompt that is not text or tokens
                assert http.request(f"{r['url']}/v1/completions", "POST", {"prompt": {"not": "a prompt"}, "max_tokens": 4})[0] == 400

            def load(seed: int) -> None:
                n = 0
                while not stopping.is_set():
                    prompt = f"The shared opening of every request, long enough for a block. Request {seed}-{n % 3}"
                    http.events(f"{served.url}/v1/completions", {"prompt": prompt, "max_tokens": 12, "temperature": 0})
                    n += 1

            clients = [threading.Thread(target=load, args=(i,), daemon=True) for i in range(3)]
            for c in clients:
                c.start()
            deadline = time.monotonic() + 180
            while time.monotonic() < deadline:
                prom.alive()
                try:
                    metrics.pools.update("default", POOL, ServingPoolStatus.model_validate(served.status()))
                except ValidationError:
                    pass  # caught mid-write
                if prom.ready():
                    results = {expr: prom.query(expr) for _, _, expr in panels(BOARD)}
                    if all(problem(expr, results[expr]) is None for _, _, expr in panels(BOARD)):
                        break
                time.sleep(1)
            stopping.set()
            for c in clients:
                c.join(60)
    finally:
        stopping.set()
        prom.stop()
        exporter.shutdown()

    with capsys.disabled():  # the table docs/testing.md records, as Markdown
        print("\n" + "\n".join(table(results, BOARD)))
    for _, title, expr in panels(BOARD):
        assert problem(expr, results.get(expr, [])) is None, f"panel {title!r}: {problem(expr, results.get(expr, []))}"
    replicas_series = {(s["metric"]["role"], s["metric"]["state"]): s["value"][1] for s in results[panels(BOARD)[0][2]]}
    assert replicas_series[("unified", "routable")] == "2" and replicas_series[("unified", "updated")] == "2"
