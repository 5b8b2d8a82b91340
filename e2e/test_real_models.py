"""Issue 22's paths in pods, on the local control plane with the chart's operator: a Hugging
Face model fine-tuned on a JSONL file (spec.model.from, spec.data.source text, held-out
evaluation, export at completion), and a user's own script through ``shardwright.sdk``
(spec.workers[].command). The process-backed nodes run the pods on this machine, so the
model directory and the data are plain paths here, as a volume would give them.
"""

from __future__ import annotations

import pytest
import yaml

from e2e.conftest import ROOT
from e2e.jobs import NS, status, wait
from tests.hf.peer import TINY, import_transformers, save_peer
from tests.support import corpus

pytestmark = pytest.mark.cluster
STEPS = 20


def _job(name: str, spec: dict) -> str:
    base = yaml.safe_load((ROOT / "examples" / "tiny-train.yaml").read_text())
    workers = [{**base["spec"]["workers"][0], "replicas": 2}]
    doc = {"apiVersion": base["apiVersion"], "kind": "TrainingJob", "metadata": {"name": name},
           "spec": {"workers": workers, "checkpoint": {"intervalSteps": 10, "keep": 2}} | spec}
    return yaml.safe_dump(doc)


def _finished(cluster, name: str) -> dict:
    return wait(lambda: (s := status(cluster, name)).get("phase") in ("Complete", "Failed") and s, 600, f"{name} to finish")


def test_a_hugging_face_model_fine_tunes_on_jsonl_in_pods(cluster, installed, tmp_path):
    model = save_peer(import_transformers(), "LlamaConfig", tmp_path / "llama", seed=5, **TINY)
    corpus.save_tokenizer(model, vocab_size=TINY["vocab_size"])
    docs = corpus.texts(200, seed=3)
    train = corpus.write_jsonl(tmp_path / "data" / "train.jsonl", docs[20:])
    held = corpus.write_jsonl(tmp_path / "data" / "valid.jsonl", docs[:20])
    spec = {
        "model": {"from": str(model)},
        "data": {"source": "text", "path": str(train), "seqLen": 32, "globalBatch": 8, "microBatch": 2,
                 "validation": {"path": str(held)}},
        "training": {"steps": STEPS, "lr": 3e-3, "warmupSteps": 2},
        "evaluation": {"intervalSteps": 10, "samples": 8},
        "export": {"dir": str(tmp_path / "export")},
    }
    cluster.kubectl("-n", NS, "apply", "-f", "-", input=_job("hf-jsonl", spec))
    final = _finished(cluster, "hf-jsonl")
    assert final["phase"] == "Complete" and final["step"] == STEPS, final
    assert final["evaluation"]["step"] == STEPS and final["evaluation"]["perplexity"] > 1, final
    assert (tmp_path / "export" / "config.json").is_file() and list((tmp_path / "export").glob("*.safetensors"))


def test_a_user_script_trains_through_the_sdk_in_pods(cluster, installed):
    example = yaml.safe_load((ROOT / "examples" / "user-script" / "job.yaml").read_text())
    command = ["python", str(ROOT / "examples" / "user-script" / "train.py")]
    spec = {"model": {}, "training": {"steps": STEPS, "lr": 3e-3}}
    doc = yaml.safe_load(_job("user-script", spec))
    doc["spec"]["workers"][0]["command"] = command
    assert example["spec"]["workers"][0]["command"][-1].endswith("user-script/train.py")
    cluster.kubectl("-n", NS, "apply", "-f", "-", input=yaml.safe_dump(doc))
    final = _finished(cluster, "user-script")
    assert final["phase"] == "Complete" and final["step"] == STEPS and final["loss"] > 0, final
    assert final["lastCheckpoint"]["step"] == STEPS, final
