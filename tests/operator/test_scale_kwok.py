"""The scale harness of bench/operator_scale_kwok.py, small, on the local control plane:
``shardwright operator`` in its own process places 50 jobs on 20 KWOK GPU nodes, restarts
the ones whose first generation lost a pod, and every job ends Complete; the report holds
every figure the benchmark prints. And the operator's list of nodes, which a pass reads
without listing 1,000 nodes again each time."""

from __future__ import annotations

import math

import pytest

from bench.operator_scale_harness import ScaleRun, add_nodes, remove_nodes
from bench.operator_scale_kwok import COLUMNS
from shardwright.operator import handlers
from tests.operator.kubeapi import FAST, Api


def test_passes_share_a_node_list_that_follows_nodes_coming_going_and_changing(monkeypatch):
    memo = handlers.make_memo(FAST)
    index = {"a": [{"name": "a", "ready": True}]}
    first = handlers._nodes(memo, index)
    assert first == [{"name": "a", "ready": True}]
    index["a"] = [{"name": "a", "ready": False}]
    assert handlers._nodes(memo, index) is first  # within NODES_FRESH_S: the same list
    index["b"] = [{"name": "b", "ready": True}]
    assert handlers._nodes(memo, index) == [{"name": "a", "ready": False}, {"name": "b", "ready": True}]  # a node came
    del index["a"]
    assert handlers._nodes(memo, index) == [{"name": "b", "ready": True}]  # a node went
    index["b"] = [{"name": "b", "ready": False}]
    monkeypatch.setattr(handlers, "NODES_FRESH_S", 0.0)
    assert handlers._nodes(memo, index) == [{"name": "b", "ready": False}]  # older than NODES_FRESH_S


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
    assert (report["failures"], report["restarted"], report["unasked_generations"]) == (5, 5, 0), report
    for key, _ in COLUMNS:
        if key not in ("load",):
            assert key in report and not math.isnan(report[key]), (key, report)
    assert report["operator_requests_by_kind"]["create pods"] >= 2 * 55, report  # 50 first and 5 second generations
    assert report["operator_requests"] > 0 and report["operator_rss_peak_mib"] > 0 and report["operator_cpu_s"] > 0
    assert 0 < report["apiserver_p50_ms"] <= report["apiserver_p99_ms"], report
    assert 0 < report["bound_p50_s"] <= report["bound_p99_s"] <= report["place_all_s"], report
