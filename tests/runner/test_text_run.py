"""`shardwright run` of a tiny Llama saved by transformers, fine-tuned on a JSONL file
(spec.data.source: text): it completes with a falling loss; a killed rank restarts from the
checkpoint and reproduces the uninterrupted loss curve bit for bit; an elastic job that
loses one of its two ranks follows it within the resize tolerance (docs/determinism.md).
And examples/finetune-hf-jsonl.yaml validates and trains once its script made its files.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
import yaml

from tests.hf.peer import TINY, import_transformers, save_peer
from tests.support import corpus

from .test_faults import events, reasons
from .test_local_run import REPO, RESIZE_TOLERANCE, SHARDWRIGHT, curve, shardwright_run, status

pytestmark = pytest.mark.slow

STEPS = 400
EXAMPLE = REPO / "examples" / "finetune-hf-jsonl.yaml"


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    """The job's manifest: 2 elastic ranks (at least 1), a checkpoint every 10 steps; the
    ranks' token cache in a folder of this module's own."""
    tmp = tmp_path_factory.mktemp("text-run")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SHARDWRIGHT_DATA_CACHE", str(tmp / "cache"))
        yield _manifest(tmp)


def _manifest(tmp):
    model = save_peer(import_transformers(), "LlamaConfig", tmp / "llama", seed=5, **TINY)
    corpus.save_tokenizer(model, vocab_size=TINY["vocab_size"])
    data = corpus.write_jsonl(tmp / "data" / "train.jsonl", corpus.texts(300, seed=2))
    manifest = {
        "apiVersion": "shardwright.io/v1alpha1", "kind": "TrainingJob", "metadata": {"name": "text-run"},
        "spec": {
            "model": {"from": str(model)},
            "data": {"source": "text", "path": str(data), "seqLen": 32, "globalBatch": 8, "microBatch": 2,
                     "validation": {"fraction": 0.1}},
            "training": {"steps": STEPS, "lr": 3e-3, "warmupSteps": 3},
            "workers": [{"name": "worker", "replicas": 2, "resources": {"requests": {"cpu": 1, "memory": "2Gi"}}}],
            "elastic": {"minReplicas": 1, "maxReplicas": 2},
            "checkpoint": {"intervalSteps": 10, "keep": 3},
            "failurePolicy": {"maxRestarts": 2, "progressDeadlineSeconds": 30, "backoff": {"initialSeconds": 0.5}},
        },
    }
    path = tmp / "job.yaml"
    path.write_text(yaml.safe_dump(manifest))
    return path


@pytest.fixture(scope="module")
def uninterrupted(job, tmp_path_factory):
    wd = tmp_path_factory.mktemp("full") / "wd"
    run = shardwright_run(job, wd)
    assert run.returncode == 0, run.stdout
    return wd


def test_fine_tuning_on_jsonl_completes_and_the_loss_falls(uninterrupted):
    st = status(uninterrupted)
    assert st["phase"] == "Complete" and st["restarts"] == 0
    losses = curve(uninterrupted)
    assert sorted(losses) == list(range(1, STEPS + 1))
    assert losses[STEPS] < 0.8 * losses[1], losses


def test_a_killed_rank_resumes_bit_identically(job, uninterrupted, tmp_path):
    run = shardwright_run(job, tmp_path / "wd", "--inject", "kill:rank=1:step=15")
    assert run.returncode == 0, run.stdout
    assert status(tmp_path / "wd")["restarts"] == 1 and "RestartedFromCheckpoint" in reasons(tmp_path / "wd")
    assert curve(tmp_path / "wd") == curve(uninterrupted)


def test_a_shrunk_job_follows_within_the_resize_tolerance(job, uninterrupted, tmp_path):
    run = shardwright_run(job, tmp_path / "wd", "--inject", "shrink:ranks=1:step=15")
    assert run.returncode == 0, run.stdout
    resharded = [e["message"] for e in events(tmp_path / "wd") if e["reason"] == "Resharded"]
    assert any("world size 2" in m and "loads at 1" in m for m in resharded), resharded
    reference, resized = curve(uninterrupted), curve(tmp_path / "wd")
    assert sorted(resized) == sorted(reference)
    worst = max(abs(reference[s] - resized[s]) for s in resized)
    print(f"text data, 2->1 ranks: worst per-step loss difference {worst:.2e} over {STEPS} steps")
    assert worst < RESIZE_TOLERANCE, worst



def test_the_finetune_example_validates_and_trains(tmp_path):
    made = subprocess.run([sys.executable, str(EXAMPLE.parent / "finetune-hf-jsonl" / "make.py")],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert made.returncode == 0, made.stderr[-3000:]
    checked = subprocess.run([*SHARDWRIGHT, "validate", str(EXAMPLE)], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    doc = yaml.safe_load(EXAMPLE.read_text())
    doc["spec"]["training"].update(steps=4, warmupSteps=1)
    doc["spec"]["checkpoint"] = {"intervalSteps": 4, "keep": 1}
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(doc))
    run = shardwright_run(tmp_path / "job.yaml", tmp_path / "wd")
    assert run.returncode == 0, run.stdout
    assert status(tmp_path / "wd")["phase"] == "Complete" and sorted(curve(tmp_path / "wd")) == [1, 2, 3, 4]
