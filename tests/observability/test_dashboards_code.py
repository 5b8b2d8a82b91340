"""The chart's dashboards are generated from code (helm/shardwright/dashboards/generate.py,
grafana-foundation-sdk): the JSON in the chart is exactly what the code writes."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

FOLDER = Path(__file__).resolve().parents[2] / "helm" / "shardwright" / "dashboards"


def generator():
    spec = importlib.util.spec_from_file_location("dashboards_generate", FOLDER / "generate.py")
    module = importlib.util.module_from_spec(spec)
    dont_write, sys.dont_write_bytecode = sys.dont_write_bytecode, True  # no __pycache__ in the chart
    try:
        spec.loader.exec_module(module)
    finally:
        sys.dont_write_bytecode = dont_write
    return module


GENERATE = generator()


def test_every_json_in_the_chart_is_generated():
    assert sorted(p.name for p in FOLDER.glob("*.json")) == sorted(GENERATE.DASHBOARDS)


@pytest.mark.parametrize("name", sorted(GENERATE.DASHBOARDS))
def test_chart_dashboard_equals_the_generated_one(name):
    fresh = GENERATE.render(GENERATE.DASHBOARDS[name])
    assert (FOLDER / name).read_text() == fresh, (
        f"helm/shardwright/dashboards/{name} differs from its code: "
        "run .venv/bin/python helm/shardwright/dashboards/generate.py"
    )


def test_every_panel_queries_prometheus_through_the_datasource_variable():
    for name, build in GENERATE.DASHBOARDS.items():
        board = json.loads(GENERATE.render(build))
        assert [v["name"] for v in board["templating"]["list"]] == ["datasource"]
        ids = [p["id"] for p in board["panels"]]
        assert len(set(ids)) == len(ids), f"{name}: panel ids repeat"
        for p in board["panels"]:
            assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, p["title"]
            assert p["targets"] and all(t["expr"] for t in p["targets"]), p["title"]
