"""`shardwright run` of examples/tiny-train.yaml with spec.evaluation: the held-out loss
reaches the job's status (at the last step), the step log, the ranks' and the operator's
metrics, the printed summary and the plot, all with the same figures.
"""

from __future__ import annotations

import math
import os
import subprocess
from pathlib import Path

import pytest
import yaml
from prometheus_client import generate_latest

from shardwright.operator.api import TrainingJobStatus
from shardwright.operator.metrics import OperatorMetrics
from tests.runner.test_local_run import EXAMPLE, RUN_TIMEOUT_S, SHARDWRIGHT, shardwright_run, status, steps

pytestmark = pytest.mark.slow

STEPS = 25  # evaluations after steps 10, 20 and the last, 25
INTERVAL = 10


@pytest.fixture(scope="module")
def manifest(tmp_path_factory) -> Path:
    doc = yaml.safe_load(EXAMPLE.read_text())
    doc["spec"]["training"]["steps"] = STEPS
    doc["spec"]["checkpoint"]["intervalSteps"] = INTERVAL  # a restart resumes from step 10
    doc["spec"]["evaluation"] = {"intervalSteps": INTERVAL, "samples": 8}
    path = tmp_path_factory.mktemp("eval") / "tiny-eval.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


@pytest.fixture(scope="module")
def evaluated(manifest, tmp_path_factory) -> tuple[Path, str]:
    workdir = tmp_path_factory.mktemp("eval-run")
    result = shardwright_run(manifest, workdir)
    assert result.returncode == 0, result.stdout
    return workdir, result.stdout


def test_status_holds_the_evaluation_of_the_last_step(evaluated):
    workdir, out = evaluated
    st = status(workdir)
    assert st["phase"] == "Complete" and st["step"] == STEPS
    ev = st["evaluation"]
    assert ev["step"] == STEPS
    assert ev["perplexity"] == pytest.approx(math.exp(ev["loss"]), rel=1e-12)
    assert f"held-out    loss {ev['loss']:.4f}, perplexity {ev['perplexity']:.3f} (step {STEPS})" in out


def test_the_step_log_carries_each_evaluation_and_it_falls(evaluated):
    workdir, _ = evaluated
    lines = {line["step"]: line for line in steps(workdir)}
    assert sorted(s for s, line in lines.items() if "evalLoss" in line) == [10, 20, 25]
    assert lines[25]["evalLoss"] == status(workdir)["evaluation"]["loss"]
    assert lines[25]["evalLoss"] < lines[10]["evalLoss"]  # the model learns the task, not the samples


def test_rank_and_operator_metrics_carry_the_figures(evaluated):
    workdir, _ = evaluated
    ev = status(workdir)["evaluation"]
    scraped = (workdir / "metrics.prom").read_text()
    for rank in (0, 1):  # every rank holds the all-reduced figure
        assert f'shardwright_rank_eval_loss_nats{{name="tiny-train",namespace="default",rank="{rank}"}} {ev["loss"]!r}' in scraped
    metrics = OperatorMetrics()
    metrics.jobs.update("default", "tiny-train", TrainingJobStatus.model_validate(status(workdir)), "torch")
    text = generate_latest(metrics.registry).decode()
    assert f'shardwright_trainingjob_eval_loss_nats{{name="tiny-train",namespace="default"}} {ev["loss"]!r}' in text
    assert f'shardwright_trainingjob_eval_perplexity{{name="tiny-train",namespace="default"}} {ev["perplexity"]!r}' in text


def test_a_restart_at_the_same_world_size_evaluates_bit_for_bit_the_same(evaluated, manifest, tmp_path):
    """Rank 1 killed after step 15: the job restarts from step 10's checkpoint and trains
    11-25 again; its evaluations at 20 and 25 equal the uninterrupted run's exactly."""
    workdir = tmp_path / "restarted"
    result = shardwright_run(manifest, workdir, "--inject", "kill:rank=1:step=15")
    assert result.returncode == 0, result.stdout
    assert status(workdir)["restarts"] == 1
    after = {line["step"]: line["evalLoss"] for line in steps(workdir) if line["generation"] == 2 and "evalLoss" in line}
    before = {line["step"]: line["evalLoss"] for line in steps(evaluated[0]) if "evalLoss" in line}
    assert sorted(after) == [20, 25]
    assert all(after[s] == before[s] for s in after), (after, before)
    assert status(workdir)["evaluation"] == status(evaluated[0])["evaluation"]


def test_the_plot_is_written(evaluated):
    workdir, _ = evaluated
    out = workdir / "plot.png"
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    done = subprocess.run([*SHARDWRIGHT, "plot", "tiny-train", "--workdir", str(workdir)], env=env,
                          capture_output=True, text=True, timeout=RUN_TIMEOUT_S)
    assert done.returncode == 0, done.stderr
    assert out.read_bytes().startswith(b"\x89PNG") and out.stat().st_size > 10_000
