"""The scale harness of bench/operator_scale_kwok.py, small, on the local control plane:
``shardwright operator`` in its own process places 50 jobs on 20 KWOK GPU nodes, restarts
the ones whose first generation lost a pod, and every job ends Complete; the report holds
every figure the benchmark prints."""

from __future__ import annotations

import math

import pytest

from bench.operator_scale_harness import ScaleRun, add_nodes, remove_nodes
from bench.operator_scale_kwok import COLUMNS
from tests.operator.kubeapi import Api


@pytest.mark.cluster
def test_fifty_jobs_on_twenty_kwok_nodes_are_placed_restarted_and_complete(kube, namespace, kwok_nodes, tmp_path):
    api = Api(kube)
    nodes = add_nodes(api, f"{namespace}-gpu", 20)
    try:
        report = ScaleRun(kube, namespace, tmp_path, jobs=50, rate=10, fail_every=10, hold_s=0.5, timeout_s=120).run()
    finally:
        remove_nodes(api, nodes)
    assert report["harness_errors"] == [], report
    assert (report["placed"], report["complete"], report["failed"]) == (50, 50, 0), report
    assert (report["failures"], report["restarted"]) == (5, 5), report
    for key, _ in COLUMNS:
        if key not in ("load",):
            assert key in report and not math.isnan(report[key]), (key, report)
    assert report["operator_requests_by_kind"]["create pods"] >= 2 * 55, report  # 50 first and 5 second generations
    assert report["operator_requests"] > 0 and report["operator_rss_peak_mib"] > 0 and report["operator_cpu_s"] > 0
    assert 0 < report["apiserver_p50_ms"] <= report["apiserver_p99_ms"], report
    assert 0 < report["bound_p50_s"] <= report["bound_p99_s"] <= report["place_all_s"], report
