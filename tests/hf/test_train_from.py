"""A TrainingJob with ``spec.model.from`` trains the model it names: run by ``shardwright run``
with a learning rate too small to move the weights, its checkpoint exported back to the
Hugging Face layout gives transformers the source model's logits."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
import yaml

from shardwright.workers.hf import export as hf_export
from shardwright.workers.hf.config import read_config

from .peer import ROOT, TINY, import_transformers, load_peer, save_peer

pytestmark = pytest.mark.slow


def test_a_job_from_a_hugging_face_directory_starts_from_its_weights(tmp_path):
    transformers = import_transformers()
    source = save_peer(transformers, "LlamaConfig", tmp_path / "llama", seed=3, **TINY)
    job = yaml.safe_load((ROOT / "examples" / "tiny-train.yaml").read_text())
    job["spec"]["model"] = {"from": str(source)}
    job["spec"]["data"] = {"task": "markov-copy", "seqLen": 16, "globalBatch": 2, "microBatch": 1}
    job["spec"]["training"] = {"steps": 2, "lr": 1e-12, "warmupSteps": 1}
    job["spec"]["workers"][0]["replicas"] = 1
    job["spec"]["checkpoint"] = {"intervalSteps": 2, "keep": 1}
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(job))
    run = subprocess.run([sys.executable, "-m", "shardwright.operator.cli", "run", str(tmp_path / "job.yaml"), "--workdir", str(tmp_path / "wd")],
                         capture_output=True, text=True, timeout=600, env={**os.environ, "RAY_AUTH_MODE": "disabled"})
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]

    cfg = read_config(source)
    hf_export.export_checkpoint(tmp_path / "wd" / "checkpoints", cfg, tmp_path / "out")
    tokens = torch.randint(TINY["vocab_size"], (1, 12), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        trained = load_peer(transformers, tmp_path / "out")(tokens).logits
        original = load_peer(transformers, source)(tokens).logits
    torch.testing.assert_close(trained, original, atol=1e-5, rtol=0)
