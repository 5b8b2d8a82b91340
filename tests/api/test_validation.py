"""`validate` rejects bad manifests with one problem per mistake, naming the field path."""

from __future__ import annotations

import subprocess
import sys

import pytest

from shardwright.operator.api import InvalidManifest, Problem, load_documents, parse, validate
from tests.support.manifests import REPO, edited, example

from .cases import CASES, Bad

EXAMPLES = sorted((REPO / "examples").glob("*.yaml"))


@pytest.fixture(scope="module")
def made_examples(tmp_path_factory):
    """Run each example's own ``make.py`` (e.g. the fine-tuning example's model and JSONL), as its users do first."""
    for script in sorted((REPO / "examples").glob("*/make.py")):
        made = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300,
                              cwd=tmp_path_factory.mktemp("make"))
        assert made.returncode == 0, made.stderr[-3000:]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_malformed_manifest_names_the_field(case: Bad):
    obj, problems = validate(case.doc)
    assert obj is None
    assert [p.path for p in problems] == [case.path], problems
    assert case.phrase in problems[0].message


def test_the_example_itself_is_valid():
    """The base every case edits is valid, so each case's problem is the edit's."""
    obj, problems = validate(example())
    assert problems == []
    assert obj is not None and obj.spec.world_size == 2


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_every_example_validates(path, made_examples):
    for doc in load_documents(path):
        obj, problems = validate(doc)
        assert problems == [], "\n".join(map(str, problems))
        assert obj.metadata.name == doc["metadata"]["name"]


@pytest.mark.parametrize("doc", [[1, 2], "TrainingJob", None, 3], ids=["list", "string", "null", "int"])
def test_a_non_mapping_document_is_rejected(doc):
    assert validate(doc) == (None, [Problem("(document)", f"must be a mapping (got {type(doc).__name__})")])


def test_all_problems_are_reported_at_once():
    doc = edited({"spec.workers[0].replicas": 0, "spec.runtime": "slurm", "spec.training.steps": "x"})
    _, problems = validate(doc)
    assert sorted(p.path for p in problems) == ["spec.runtime", "spec.training.steps", "spec.workers[0].replicas"]
    doc = edited({"spec.data.microBatch": 32, "spec.parallelism.tensor": 2, "spec.model.kvHeads": 3})
    _, problems = validate(doc)
    assert sorted(p.path for p in problems) == ["spec.data.microBatch", "spec.model.kvHeads", "spec.parallelism.tensor"]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_messages_are_for_people(case: Bad):
    """No tracebacks, pydantic URLs or Python type spellings leak into what a user reads."""
    _, problems = validate(case.doc)
    for text in map(str, problems):
        assert "Traceback" not in text and "errors.pydantic.dev" not in text
        assert "https://" not in text and "<class" not in text


def test_parse_raises_with_every_problem_and_the_source():
    with pytest.raises(InvalidManifest) as info:
        parse(edited({"spec.workers[0].replicas": 0, "spec.runtime": "slurm"}), "job.yaml")
    assert len(info.value.problems) == 2
    assert str(info.value).splitlines()[0].startswith("job.yaml: spec.")


def test_quantities_accept_integers_and_strings():
    obj, problems = validate(edited({"spec.workers[0].resources.limits": {"cpu": 2, "memory": "8Gi"}}))
    assert problems == []
    assert obj.spec.workers[0].resources.limits == {"cpu": "2", "memory": "8Gi"}


def test_invalid_yaml_names_line_and_column(tmp_path):
    path = tmp_path / "job.yaml"
    path.write_text("apiVersion: shardwright.io/v1alpha1\nspec:\n  model: {preset: tiny\n  workers: []\n")
    with pytest.raises(InvalidManifest) as info:
        load_documents(path)
    (problem,) = info.value.problems
    assert problem.path == "yaml"
    assert problem.message.startswith("line 4, column ")
    assert str(path) in str(info.value)


def test_empty_and_missing_files_are_problems_too(tmp_path):
    empty = tmp_path / "empty.yaml"
    empty.write_text("---\n---\n")
    with pytest.raises(InvalidManifest, match="no documents in file"):
        load_documents(empty)
    with pytest.raises(InvalidManifest, match="file: cannot read"):
        load_documents(tmp_path / "absent.yaml")
