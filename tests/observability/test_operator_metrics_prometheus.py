"""The dashboard panels on what the operator itself exports, from ``shardwright operator``
on the local control plane, scraped by a real Prometheus.

The operator runs out of cluster against kube-apiserver (as in
tests/cluster/test_operator_out_of_cluster.py) with its ``/metrics`` on a free port and
reconciles examples/tiny-train.yaml (evaluating every 20 steps, for the held-out loss panel):

- in a namespace whose ResourceQuota allows no pods: the API server refuses the job's pods
  (403), so the passes are timed
  (``shardwright_operator_reconcile_seconds``) and end in an API error
  (``shardwright_operator_reconcile_errors_total``), both real; every panel reading an
  operator-only family must return a series with a number;
- on the process-backed nodes, to Complete: every job panel (``shardwright_trainingjob_*``)
  must return one. The rank panels read the ranks' own endpoints, not the operator's
  (tests/observability/test_dashboards_prometheus.py scrapes them from a real run).
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import time

import pytest
import yaml

from tests.observability.prom import OPERATOR_ONLY, ROOT, Prometheus, expected_labels, free_port, get, panels, stop, table

pytestmark = pytest.mark.cluster


def test_reconcile_panels_return_series_from_the_operator_on_the_control_plane(kube, namespace, tmp_path, capsys):
    kube.kubectl("-n", namespace, "create", "quota", "no-pods", "--hard=pods=0")
    wanted = [(title, expr) for _, title, expr in panels() if OPERATOR_ONLY in expr]
    assert wanted, "the dashboards chart the operator's reconcile loop"
    panels_from_the_operator(kube, namespace, tmp_path, capsys, wanted)


def test_job_panels_return_series_from_the_operator_running_a_job(kube, namespace, process_nodes, tmp_path, capsys):
    """The job panels (``shardwright_trainingjob_*``: phase, step, loss, tokens/s, ranks,
    generation, restarts, checkpoint) on what the operator exports while it runs
    examples/tiny-train.yaml on the process-backed nodes to Complete."""
    wanted = [(title, expr) for _, title, expr in panels() if JOB_FAMILIES in expr]
    assert wanted, "the dashboards chart the operator's jobs"
    panels_from_the_operator(kube, namespace, tmp_path, capsys, wanted)


#: Metric families the operator exports per TrainingJob (the local controller exports them too).
JOB_FAMILIES = "shardwright_trainingjob_"


def panels_from_the_operator(kube, namespace: str, tmp_path, capsys, wanted: list[tuple[str, str]]) -> None:
    """Run ``shardwright operator`` out of cluster on examples/tiny-train.yaml with a real
    Prometheus scraping its ``/metrics``, until every ``wanted`` panel query returns a series
    with a number (or 180 s pass); then check each one and its labels."""
    prom = Prometheus(tmp_path).start()
    port = free_port()
    operator = subprocess.Popen(
        [sys.executable, "-m", "shardwright.operator.cli", "operator", f"--metrics-port={port}", "--bind-address=127.0.0.1", "--health-port=0",
         f"--webhook-cert-dir={tmp_path / 'none'}", f"--namespace={namespace}"],
        stdout=(tmp_path / "operator.log").open("w"), stderr=subprocess.STDOUT,
        env={**os.environ, "KUBECONFIG": str(kube.kubeconfig)}, start_new_session=True,
    )
    results: dict[str, list[dict]] = {}
    try:
        job = yaml.safe_load((ROOT / "examples" / "tiny-train.yaml").read_text())
        job["spec"]["evaluation"] = {"intervalSteps": 20, "samples": 4}  # the held-out loss panel
        kube.kubectl("-n", namespace, "apply", "-f", "-", input=yaml.safe_dump(job))
        prom.targets([port])
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            assert operator.poll() is None, (tmp_path / "operator.log").read_text()[-3000:]
            prom.alive()
            if prom.ready() and get(f"http://127.0.0.1:{port}/metrics"):
                results = {expr: prom.query(expr) for _, _, expr in panels()}
                if all(any(not math.isnan(float(s["value"][1])) for s in results[expr]) for _, expr in wanted):
                    break
            time.sleep(1)
    finally:
        kube.kubectl("-n", namespace, "delete", "tj", "tiny-train", "--timeout=60s", check=False)
        stop(operator, wait=60)
        prom.stop()

    with capsys.disabled():
        print("\n" + "\n".join(table(results, "shardwright-training.json")))
    for title, expr in wanted:
        series = results.get(expr, [])
        assert any(not math.isnan(float(s["value"][1])) for s in series), f"panel {title!r}: {expr} gave {series}"
        for s in series:
            assert expected_labels(expr) <= set(s["metric"]), f"panel {title!r}: {s['metric']}"
    assert "Traceback" not in (tmp_path / "operator.log").read_text()
