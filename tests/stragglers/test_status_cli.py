"""`shardwright status JOB.yaml -o json|yaml`: the last status a local run wrote, as kubectl shows .status."""

from __future__ import annotations

import json

import yaml

from shardwright.operator import cli
from shardwright.operator.api import StragglerAction, StragglerStatus, TrainingJobStatus
from tests.runner.test_local_run import EXAMPLE


def test_status_prints_the_runs_status_as_json_and_yaml(tmp_path, capsys):
    status = TrainingJobStatus(step=42, data_shares=[1.2, 0.8], stragglers=[
        StragglerStatus(rank=1, node="localhost", score=0.66, since_step=24, action=StragglerAction.REBALANCE),
    ])
    (tmp_path / "status.json").write_text(json.dumps(status.to_wire()))
    assert cli.main(["status", str(EXAMPLE), "--workdir", str(tmp_path), "-o", "json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["step"] == 42 and shown["dataShares"] == [1.2, 0.8]
    assert shown["stragglers"] == [{"rank": 1, "node": "localhost", "score": 0.66, "sinceStep": 24, "action": "rebalance"}]
    assert cli.main(["status", str(EXAMPLE), "--workdir", str(tmp_path), "-o", "yaml"]) == 0
    assert yaml.safe_load(capsys.readouterr().out) == shown


def test_status_of_a_job_never_run_says_how_to_run_it(tmp_path, capsys):
    assert cli.main(["status", str(EXAMPLE), "--workdir", str(tmp_path)]) == 1
    assert "run the job first (`shardwright run FILE`)" in capsys.readouterr().err
