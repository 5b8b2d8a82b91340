"""``validate`` dispatches on kind: TrainingJob and ServingPool documents, one message style."""

from __future__ import annotations

from pathlib import Path

import yaml

from shardwright.operator import cli
from shardwright.operator.api import ServingPool, TrainingJob, validate

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def test_each_kind_validates_as_itself():
    pool, problems = validate(yaml.safe_load((EXAMPLES / "tiny-serve.yaml").read_text()))
    assert problems == [] and isinstance(pool, ServingPool)
    job, problems = validate(yaml.safe_load((EXAMPLES / "tiny-train.yaml").read_text()))
    assert problems == [] and isinstance(job, TrainingJob)


def test_a_bad_pool_names_the_field_and_the_fix():
    doc = yaml.safe_load((EXAMPLES / "tiny-serve.yaml").read_text())
    doc["spec"]["engine"]["kvBlocks"] = 2
    doc["spec"]["router"]["policy"] = "random"
    _, problems = validate(doc)
    assert [str(p) for p in problems] == ["spec.router.policy: must be one of: prefix-aware, least-load, round-robin (got 'random')"]
    del doc["spec"]["router"]["policy"]
    _, problems = validate(doc)
    assert [p.path for p in problems] == ["spec.engine.kvBlocks"] and "raise kvBlocks to at least 16" in problems[0].message


def test_shardwright_validate_takes_pools_and_run_refuses_them(capsys):
    assert cli.main(["validate", str(EXAMPLES / "tiny-serve.yaml")]) == 0
    assert "ServingPool/tiny-serve: valid" in capsys.readouterr().out
    assert cli.main(["run", str(EXAMPLES / "tiny-serve.yaml")]) == cli.EXIT_INVALID
    assert "expected exactly one TrainingJob, found 0" in capsys.readouterr().err


def test_a_name_with_a_line_break_keeps_each_problem_on_one_line(tmp_path, capsys):
    doc = yaml.safe_load((EXAMPLES / "tiny-train.yaml").read_text())
    doc["metadata"]["name"] = "tiny\rtrain"
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(doc))
    assert cli.main(["validate", str(path)]) == cli.EXIT_INVALID
    err = capsys.readouterr().err
    assert "\r" not in err and err.count("\n") == 1 and "'TrainingJob/tiny\\rtrain'" in err and "metadata.name" in err, err
