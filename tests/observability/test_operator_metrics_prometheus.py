"""The dashboard panels on the operator's own loop, from ``shardwright operator`` on the
local control plane, scraped by a real Prometheus.

The operator runs out of cluster against kube-apiserver (as in
tests/cluster/test_operator_out_of_cluster.py) with its ``/metrics`` on a free port, and
reconciles examples/tiny-train.yaml in a namespace that enforces the restricted Pod Security
level: the API server refuses the job's pods (REVIEW-operator finding 4), so the passes are
timed (``shardwright_operator_reconcile_seconds``) and end in an API error
(``shardwright_operator_reconcile_errors_total``), both real. Every panel query reading an
operator-only family must then return a series with a number.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import time

import pytest

from tests.observability.prom import OPERATOR_ONLY, ROOT, Prometheus, expected_labels, free_port, get, panels, stop, table

pytestmark = pytest.mark.cluster


def test_reconcile_panels_return_series_from_the_operator_on_the_control_plane(kube, namespace, tmp_path, capsys):
    prom = Prometheus(tmp_path).start()
    kube.kubectl("label", "namespace", namespace, "pod-security.kubernetes.io/enforce=restricted")
    port = free_port()
    operator = subprocess.Popen(
        [sys.executable, "-m", "shardwright.operator.cli", "operator", f"--metrics-port={port}", "--bind-address=127.0.0.1", "--health-port=0",
         f"--webhook-cert-dir={tmp_path / 'none'}", f"--namespace={namespace}"],
        stdout=(tmp_path / "operator.log").open("w"), stderr=subprocess.STDOUT,
        env={**os.environ, "KUBECONFIG": str(kube.kubeconfig)}, start_new_session=True,
    )
    wanted = [(title, expr) for _, title, expr in panels() if OPERATOR_ONLY in expr]
    assert wanted, "the dashboards chart the operator's reconcile loop"
    results: dict[str, list[dict]] = {}
    try:
        kube.kubectl("-n", namespace, "apply", "-f", str(ROOT / "examples" / "tiny-train.yaml"))
        prom.targets([port])
        deadline = time.monotonic() + 120
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
        print("\n" + "\n".join(table(results)))
    for title, expr in wanted:
        series = results.get(expr, [])
        assert any(not math.isnan(float(s["value"][1])) for s in series), f"panel {title!r}: {expr} gave {series}"
        for s in series:
            assert expected_labels(expr) <= set(s["metric"]), f"panel {title!r}: {s['metric']}"
    assert "Traceback" not in (tmp_path / "operator.log").read_text()
