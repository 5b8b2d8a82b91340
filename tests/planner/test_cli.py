"""`shardwright plan`: output shape, exit code of an infeasible job; `parallelism: auto` runs."""

from __future__ import annotations

import json

import pytest
import yaml

from shardwright.operator.cli import main

from .clusters import JOB, node, nodelist

from tests.runner.test_local_run import REPO, shardwright_run, status

EXAMPLE = REPO / "examples" / "plan-llama-8b.yaml"
NODES = REPO / "examples" / "nodes" / "mixed.yaml"


def test_json_output_has_the_documented_keys(capsys):
    assert main(["plan", str(EXAMPLE), "--nodes", str(NODES), "-o", "json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert {"degrees", "groups", "ranks", "predictedStepSeconds", "memoryPerGpuBytes", "alternatives"} <= set(out)
    assert set(out["degrees"]) == {"data", "tensor", "pipeline", "sequence"}
    assert set(out["groups"]) == {"tensor", "sequence", "pipeline", "data"}
    assert len(out["ranks"]) == 48 and {"rank", "node", "gpu", "share"} <= set(out["ranks"][0])
    d = out["degrees"]
    assert d["data"] * d["tensor"] * d["pipeline"] * d["sequence"] == 48
    assert all(isinstance(g, list) and all(isinstance(r, int) for r in g) for g in out["groups"]["data"])


def test_table_and_yaml_outputs(capsys):
    assert main(["plan", str(EXAMPLE), "--nodes", str(NODES), "--explain"]) == 0
    text = capsys.readouterr().out
    assert "predicted step" in text and "alternatives:" in text and "h100-0" in text
    assert main(["plan", str(EXAMPLE), "--nodes", str(NODES), "-o", "yaml"]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["degrees"]


def test_infeasible_job_exits_2_naming_the_limit(tmp_path, capsys):
    job = yaml.safe_load(yaml.safe_dump(JOB))
    job["spec"]["workers"][0]["replicas"] = 4
    job["spec"]["parallelism"] = {"data": 4}
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(job))
    (tmp_path / "nodes.yaml").write_text(yaml.safe_dump(nodelist(node("l0", "L40S", gpus=4))))
    assert main(["plan", str(tmp_path / "job.yaml"), "--nodes", str(tmp_path / "nodes.yaml")]) == 2
    assert "GiB per GPU at tensor=1" in capsys.readouterr().err


def test_nodes_file_missing_or_without_nodes_is_named_as_the_problem(tmp_path, capsys):
    """The nodes file is blamed, not the job, and a job file given as nodes says it holds no
    Node instead of "room for 0 GPUs"."""
    assert main(["plan", str(EXAMPLE), "--nodes", str(tmp_path / "missing.yaml")]) == 2
    assert capsys.readouterr().err == f"--nodes {tmp_path / 'missing.yaml'}: No such file or directory\n"
    assert main(["plan", str(EXAMPLE), "--nodes", str(EXAMPLE)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"--nodes {EXAMPLE}: no Node objects in it (it holds a TrainingJob)") and "GPUs" not in err


@pytest.mark.slow
def test_auto_parallelism_runs_on_the_embedded_default(tmp_path):
    doc = yaml.safe_load((REPO / "examples" / "tiny-train.yaml").read_text())
    doc["spec"]["parallelism"] = {"auto": True}
    doc["spec"]["training"]["steps"] = 6
    doc["spec"]["checkpoint"]["intervalSteps"] = 3
    manifest = tmp_path / "auto.yaml"
    manifest.write_text(yaml.safe_dump(doc))
    run = shardwright_run(manifest, tmp_path / "work")
    assert run.returncode == 0, run.stdout
    st = status(tmp_path / "work")
    assert st["phase"] == "Complete" and st["plan"].startswith("dp=2,sp=1")


POOL = REPO / "examples" / "serve-llama-8b.yaml"
INFERENCE = REPO / "examples" / "nodes" / "inference.yaml"


def test_a_pools_gpu_mix_is_planned_on_the_clusters_gpus(capsys):
    assert main(["plan", str(POOL), "--nodes", str(INFERENCE)]) == 0
    text = capsys.readouterr().out
    assert "GPU mix:" in text and "the cheapest single type" in text and "Capacity per replica at the SLO" in text
    assert main(["plan", str(POOL), "--nodes", str(INFERENCE), "-o", "json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert {b["requestsPerSecond"] for b in doc["buckets"]} == {3.0, 1.8, 0.9, 0.3}
    assert doc["costRatio"] < 1 and doc["mix"]["costPerHour"] < doc["singleType"][doc["cheapestSingleType"]]["costPerHour"]
    assert set(doc["singleType"]) == {"L4", "A10G", "L40S", "A100-80GB", "H100"}
    # Only H100 nodes: the mix is of H100s alone, and says so.
    assert main(["plan", str(POOL), "--nodes", str(NODES), "-o", "json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert {s["gpu"] for s in doc["mix"]["shapes"]} <= {"H100", "A100-80GB", "L40S"} and doc["costRatio"] <= 1


def test_a_pool_without_traffic_or_a_latency_target_is_refused_naming_the_field(tmp_path, capsys):
    doc = yaml.safe_load(POOL.read_text())
    del doc["spec"]["traffic"]
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(doc))
    assert main(["plan", str(tmp_path / "p.yaml"), "--nodes", str(INFERENCE)]) == 2
    assert "spec.traffic: the GPU mix is sized for the expected traffic" in capsys.readouterr().err
    doc = yaml.safe_load(POOL.read_text())
    doc["spec"]["slo"] = {}
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(doc))
    assert main(["plan", str(tmp_path / "p.yaml"), "--nodes", str(INFERENCE)]) == 2
    assert "spec.slo: the GPU mix is sized to meet a latency target" in capsys.readouterr().err
    doc = yaml.safe_load(POOL.read_text())
    doc["spec"]["traffic"]["lengths"][3]["inputTokens"] = 9000
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(doc))
    assert main(["plan", str(tmp_path / "p.yaml"), "--nodes", str(INFERENCE)]) == 2
    assert "spec.traffic.lengths[3]: inputTokens + outputTokens (9500) must be <= engine.maxModelLen (8192)" in capsys.readouterr().err
