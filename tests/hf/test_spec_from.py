"""``spec.model.from`` names a Hugging Face directory: the job takes its architecture, and a
directory the model cannot express is rejected with the config field named."""

from __future__ import annotations

import json

import pytest

from shardwright.operator.api import validation
from tests.support.manifests import edited

from .peer import import_transformers, save_peer


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    return save_peer(import_transformers(), "LlamaConfig", tmp_path_factory.mktemp("hf") / "llama", tie_word_embeddings=True)


def _problems(edits):
    doc = edited({"spec.model": edits})
    job, problems = validation.validate(doc)
    return job, [(p.path, p.message) for p in problems]


def test_a_job_from_a_hf_directory_takes_its_architecture(llama):
    job, problems = _problems({"from": str(llama)})
    assert problems == []
    m = job.spec.model.resolve()
    assert (m.dim, m.heads, m.kv_heads, m.layers, m.vocab_size, m.tie_embeddings) == (32, 4, 2, 2, 96, True)
    assert m.source == str(llama) and set(m.layer_kinds) == {"softmax"}
    assert job.spec.to_wire()["model"]["from"] == str(llama)  # camelCase on the wire is the keyword


def test_from_with_dimensions_is_rejected(llama):
    _, problems = _problems({"from": str(llama), "dim": 64, "attention": "kda"})
    assert problems == [("spec.model", "Value error, from gives the whole architecture; remove attention, dim")]


def test_a_missing_directory_is_rejected(tmp_path):
    _, problems = _problems({"from": str(tmp_path)})
    assert problems == [("spec.model.from", f"Value error, {tmp_path} is not a Hugging Face model directory: no config.json")]


def test_in_a_cluster_the_path_is_read_by_the_ranks_not_by_admission(llama, tmp_path, monkeypatch):
    """The operator mounts no rank volume (operator/api/localpaths.py): its webhook checks the
    form only, and each rank reads config.json when it starts (workers/hf/fetch.localize)."""
    from shardwright.operator.api import localpaths
    from shardwright.workers.hf.fetch import localize

    monkeypatch.setenv(localpaths.ENV, "0")
    job, problems = _problems({"from": "/models/llama"})  # not on this machine: in the pods' volume
    assert problems == []
    deferred = job.spec.model.resolve()
    assert deferred.source == "/models/llama"
    at_start = localize(_problems({"from": str(llama)})[0].spec.model.resolve())  # what a rank reads when it starts
    monkeypatch.setenv(localpaths.ENV, "1")
    assert at_start == _problems({"from": str(llama)})[0].spec.model.resolve()  # = what admission reads on one machine


def test_an_unsupported_config_field_is_named(llama, tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(json.loads((llama / "config.json").read_text()) | {"hidden_act": "gelu"}))
    _, problems = _problems({"from": str(tmp_path)})
    assert problems == [("spec.model.from", "Value error, config.json: hidden_act: only SwiGLU with SiLU is implemented (got 'gelu', need 'silu')")]
