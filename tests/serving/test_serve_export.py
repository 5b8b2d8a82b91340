"""Train -> serve: a TrainingJob with ``spec.export`` run by ``shardwright run`` writes a Hugging
Face directory when it completes, and a ServingPool whose ``model.from`` is that directory
serves it with its tokenizer.json: the greedy completion of a text prompt, through a replica
and through the router, is transformers' ``generate(do_sample=False)`` on the same directory,
token ids and decoded text."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
import yaml

from shardwright.operator.api.servingpool import validate_pool
from shardwright.operator.api.validation import validate
from shardwright.operator.controller.pool import PoolRef, router_config, serve_config
from shardwright.workers.hf.config import read_config
from shardwright.workers.serve.router.server import Router
from shardwright.workers.serve.server import ReplicaServer
from shardwright.workers.serve.weights import build_model
from tests.hf.peer import ROOT, TINY, import_transformers, load_peer, save_peer, save_tokenizer
from tests.support.cluster import wait_for
from tests.support.manifests import edited

from . import http

PROMPTS = ["the quick brown fox", "a model trained here", "shards"]


@pytest.fixture(scope="module")
def transformers():
    return import_transformers()


def test_a_pool_from_a_uri_is_read_by_its_replicas_and_bad_ones_are_refused():
    pool, problems = validate_pool(_pool("s3://models/tuned"))
    assert problems == [] and serve_config(PoolRef("p"), pool.spec, 0).model.source == "s3://models/tuned"
    _, problems = validate_pool(_pool("gs://models/tuned"))
    assert [(p.path, p.message) for p in problems] == [("spec.model.from", "must be a path, a file:// URI or s3://bucket/prefix (got 'gs://models/tuned')")]


@pytest.fixture(scope="module")
def trained(transformers, tmp_path_factory):
    """``shardwright run`` of a 2-step job from a tiny Llama with a trained tokenizer, with
    ``export: {}``: the export lands in <checkpoint directory>/export. (source, workdir)."""
    tmp = tmp_path_factory.mktemp("train")
    source = save_tokenizer(save_peer(transformers, "LlamaConfig", tmp / "llama", seed=7, bos_token_id=1, eos_token_id=2))
    job = yaml.safe_load((ROOT / "examples" / "tiny-train.yaml").read_text())
    job["spec"]["model"] = {"from": str(source)}
    job["spec"]["data"] = {"task": "markov-copy", "seqLen": 16, "globalBatch": 2, "microBatch": 1}
    job["spec"]["training"] = {"steps": 2, "lr": 0.01, "warmupSteps": 1}
    job["spec"]["workers"][0]["replicas"] = 1
    job["spec"]["checkpoint"] = {"intervalSteps": 2, "keep": 1}
    job["spec"]["export"] = {}
    (tmp / "job.yaml").write_text(yaml.safe_dump(job))
    run = subprocess.run([sys.executable, "-m", "shardwright.operator.cli", "run", str(tmp / "job.yaml"), "--workdir", str(tmp / "wd")],
                         capture_output=True, text=True, timeout=600, env={**os.environ, "RAY_AUTH_MODE": "disabled"})
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    return source, tmp / "wd"


def test_an_export_of_a_model_with_linear_attention_is_refused_at_admission():
    _, problems = validate(edited({"spec.model": {"attention": "gated-delta"}, "spec.export": {}}))
    assert [(p.path, p.message) for p in problems] == [
        ("spec.export", "only softmax-attention models export to the Hugging Face layout; this model has gated-delta layers: remove export")]


@pytest.mark.slow
def test_a_completed_job_exports_its_final_model(transformers, trained):
    source, wd = trained
    export = wd / "checkpoints" / "export"
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "generation_config.json"} <= set(os.listdir(export))
    assert json.loads((export / "config.json").read_text())["eos_token_id"] == 2
    final = build_model(read_config(source).model_copy(update={"source": None}), seed=0, checkpoint=str(wd / "checkpoints"))
    tokens = torch.randint(TINY["vocab_size"], (1, 12), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        theirs = load_peer(transformers, export)(tokens).logits
        torch.testing.assert_close(theirs, final(tokens, torch.arange(12)), atol=1e-5, rtol=0)  # the last commit's weights
        assert not torch.allclose(theirs, load_peer(transformers, source)(tokens).logits, atol=1e-3)  # trained, not the source


def _pool(export, **model) -> dict:
    doc = yaml.safe_load((ROOT / "examples" / "tiny-serve.yaml").read_text())
    doc["spec"]["model"] = {"from": str(export), "servedName": "tuned"} | model
    return doc


@pytest.mark.slow
def test_a_pool_serves_the_export_with_transformers_greedy_tokens_and_text(transformers, trained):
    export = trained[1] / "checkpoints" / "export"
    pool, problems = validate_pool(_pool(export))
    assert problems == []
    ref = PoolRef("tuned-pool")
    peer = load_peer(transformers, export)
    tokenizer = transformers.AutoTokenizer.from_pretrained(export)
    with ReplicaServer(serve_config(ref, pool.spec, 0).model_copy(update={"port": 0})) as replica, \
            Router(router_config(ref, pool.spec)) as router:
        router.register("r0", replica.url)
        wait_for(router.endpoints.routable, 20, "the router to probe the replica", every=0.02)
        outputs = []
        for prompt in PROMPTS:
            ids = tokenizer(prompt)["input_ids"]
            with torch.no_grad():
                theirs = peer.generate(torch.tensor([ids]), max_new_tokens=10, do_sample=False)[0, len(ids):].tolist()
            text = tokenizer.decode(theirs, skip_special_tokens=True)
            body = {"model": "tuned", "prompt": prompt, "max_tokens": 10, "temperature": 0, "return_token_ids": True}
            for url in (replica.url, router.url):
                status, out = http.post(f"{url}/v1/completions", body)
                assert status == 200, out
                assert (out["choices"][0]["token_ids"], out["choices"][0]["text"]) == (theirs, text), url
                assert out["usage"]["prompt_tokens"] == len(ids)
            outputs.append(theirs)
    assert len({tuple(o) for o in outputs}) == len(PROMPTS)  # the prompt matters


@pytest.mark.parametrize(("model", "problem"), [
    ({"checkpoint": "/ckpt"}, ("spec.model.checkpoint", "from gives the weights; remove checkpoint (or from)")),
    ({"seed": 3}, ("spec.model.seed", "from gives the weights; remove seed (or from)")),
    ({"dim": 64}, ("spec.model", "Value error, from gives the whole architecture; remove dim")),
], ids=["checkpoint", "seed", "dim"])
def test_a_pool_refuses_what_contradicts_from(transformers, tmp_path, model, problem):
    source = save_peer(transformers, "LlamaConfig", tmp_path / "llama")
    _, problems = validate_pool(_pool(source, **model))
    assert [(p.path, p.message) for p in problems] == [problem]
