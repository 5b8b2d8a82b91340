"""``spec.model.from: s3://bucket/prefix``: a Hugging Face directory on the real S3-compatible
server the tests start (tests/support/s3.py) is fetched to a local cache and loads with the
logits of the same directory read locally; a job trains from a bucket and exports to it, and a
pool serves that export from the bucket; bad URIs are refused naming the field."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
import yaml

from shardwright.operator import cli
from shardwright.operator.api import validation
from shardwright.operator.api.servingpool import validate_pool
from shardwright.operator.controller.pool import PoolRef, serve_config
from shardwright.workers.hf import fetch
from shardwright.workers.hf import weights as hf_weights
from shardwright.workers.hf.config import read_config
from shardwright.workers.serve.server import ReplicaServer
from tests.support.manifests import edited
from tests.serving import http
from tests.support.s3 import s3_server

from .peer import ROOT, import_transformers, load_peer, save_peer


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    with s3_server(tmp_path_factory.mktemp("s3")) as server:
        yield server


@pytest.fixture()
def store(s3, monkeypatch):
    """This process talks to the server as a rank would: keys and endpoint in its environment."""
    import s3fs

    for name, value in s3.env().items():
        monkeypatch.setenv(name, value)
    s3fs.S3FileSystem.clear_instance_cache()
    return s3fs.S3FileSystem(use_listings_cache=False, skip_instance_cache=True)


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    return save_peer(import_transformers(), "LlamaConfig", tmp_path_factory.mktemp("hf") / "llama", seed=5,
                     tie_word_embeddings=False)


def _upload(store, local, uri: str) -> None:
    for file in sorted(local.iterdir()):
        store.put_file(str(file), f"{uri.removeprefix('s3://')}/{file.name}")


def test_a_model_on_s3_loads_with_the_logits_of_its_local_directory(s3, store, llama, tmp_path):
    uri = s3.uri("models/llama")
    _upload(store, llama, uri)
    cfg = fetch.localize(read_config(llama).model_copy(update={"source": uri}), tmp_path / "cache")
    assert cfg.source is not None and cfg.source.startswith(str(tmp_path / "cache"))
    assert cfg.model_copy(update={"source": None}) == read_config(llama).model_copy(update={"source": None})
    assert sorted(os.listdir(cfg.source)) == sorted(os.listdir(llama))

    tokens = torch.randint(96, (2, 13), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        fetched = hf_weights.load_pretrained(cfg.source).eval()(tokens, torch.arange(13))
        local = hf_weights.load_pretrained(llama).eval()(tokens, torch.arange(13))
        peer = load_peer(import_transformers(), llama)(tokens).logits
    assert torch.equal(fetched, local)
    torch.testing.assert_close(fetched, peer, atol=1e-5, rtol=0)


def test_the_cache_is_reused_until_the_uri_holds_another_model(s3, store, llama, tmp_path):
    uri = s3.uri("models/again")
    _upload(store, llama, uri)
    first = fetch.fetch(uri, tmp_path)
    assert fetch.fetch(uri, tmp_path) == first  # unchanged: the same folder, nothing downloaded
    store.pipe_file(f"{uri.removeprefix('s3://')}/generation_config.json", b'{"max_length": 7}')
    second = fetch.fetch(uri, tmp_path)
    assert second != first and (second / "generation_config.json").read_text() == '{"max_length": 7}'
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_dir()) == sorted([first.name, second.name])  # no partial left


def test_a_prefix_without_config_json_is_not_a_model(s3, store, tmp_path):
    store.pipe_file(f"{s3.bucket}/models/empty/model.safetensors", b"x")
    with pytest.raises(FileNotFoundError, match=r"s3://checkpoints/models/empty is not a Hugging Face model directory: no config.json"):
        fetch.fetch(s3.uri("models/empty"), tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_a_uri_is_read_by_the_ranks_not_at_admission():
    job, problems = validation.validate(edited({"spec.model": {"from": "s3://no-such-bucket/llama"}}))
    assert problems == []
    assert job.spec.model.resolve().source == "s3://no-such-bucket/llama"


@pytest.mark.parametrize(("uri", "message"), [
    ("gs://bucket/llama", "must be a path, a file:// URI or s3://bucket/prefix (got 'gs://bucket/llama')"),
    ("s3://key:secret@bucket/llama", "must not carry credentials or a port: give keys in credentialsSecret and the server in endpoint (got 's3://key:secret@bucket/llama')"),
    ("s3://Bucket_1/llama", "s3 bucket 'Bucket_1' is not a valid bucket name: 3-63 lowercase letters, digits, '.' and '-', starting and ending with a letter or digit, no '..', not an IP address"),
], ids=["scheme", "credentials", "bucket"])
def test_bad_uris_are_refused_naming_the_field(uri, message):
    _, problems = validation.validate(edited({"spec.model": {"from": uri}}))
    assert [(p.path, p.message) for p in problems] == [("spec.model.from", message)]


@pytest.mark.slow
def test_a_job_trains_from_a_bucket_and_exports_to_it_and_a_pool_serves_that(s3, store, llama, tmp_path):
    """``shardwright run``: every rank fetches ``from`` when it starts; rank 0 uploads the export
    at completion, config.json last, and ``shardwright export -o s3://...`` writes the same; a
    replica of a pool naming the export fetches and serves it."""
    transformers = import_transformers()
    _upload(store, llama, s3.uri("models/run-src"))
    job = yaml.safe_load((ROOT / "examples" / "tiny-train.yaml").read_text())
    job["spec"]["model"] = {"from": s3.uri("models/run-src")}
    job["spec"]["data"] = {"task": "markov-copy", "seqLen": 16, "globalBatch": 2, "microBatch": 1}
    job["spec"]["training"] = {"steps": 2, "lr": 1e-12, "warmupSteps": 1}  # too small to move the weights
    job["spec"]["checkpoint"] = {"intervalSteps": 2, "keep": 1}
    job["spec"]["export"] = {"dir": s3.uri("models/run-out")}
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(job))
    run = subprocess.run([sys.executable, "-m", "shardwright.operator.cli", "run", str(tmp_path / "job.yaml"), "--workdir", str(tmp_path / "wd")],
                         capture_output=True, text=True, timeout=600, env={**os.environ, "RAY_AUTH_MODE": "disabled"})
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert s3.keys("models/run-out/") == ["models/run-out/config.json", "models/run-out/generation_config.json", "models/run-out/model.safetensors"]
    # shardwright export of the same job to the bucket: the final checkpoint's tensors, as exported at completion
    assert cli.main(["export", str(tmp_path / "job.yaml"), "--workdir", str(tmp_path / "wd"), "-o", s3.uri("models/cli-out")]) == 0
    at_completion, by_cli = (hf_weights.read_safetensors(fetch.fetch(s3.uri(p), tmp_path / "cache")) for p in ("models/run-out", "models/cli-out"))
    assert at_completion.keys() == by_cli.keys() and all(torch.equal(at_completion[k], by_cli[k]) for k in by_cli)

    pool, problems = validate_pool({"apiVersion": "shardwright.io/v1alpha1", "kind": "ServingPool", "metadata": {"name": "p"},
                                    "spec": {"model": {"from": s3.uri("models/run-out")}}})
    assert problems == []
    with ReplicaServer(serve_config(PoolRef("p"), pool.spec, 0)) as replica:
        status, out = http.post(f"{replica.url}/v1/completions", {"prompt": [3, 1, 4, 1, 5], "max_tokens": 8, "temperature": 0, "return_token_ids": True})
    assert status == 200, out
    with torch.no_grad():
        theirs = load_peer(transformers, llama).generate(torch.tensor([[3, 1, 4, 1, 5]]), max_new_tokens=8, do_sample=False)[0, 5:].tolist()
    assert out["choices"][0]["token_ids"] == theirs  # the source's tokens: served from the bucket, unmoved by lr 1e-12
