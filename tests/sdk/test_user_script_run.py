"""`shardwright run` of the example user script (examples/user-script): real Ray actors, real
child processes, real gloo and DCP. It completes with status from the SDK's reporter; a
killed rank restarts the generation, which resumes from the last commit and reproduces the
uninterrupted loss curve bit for bit; a program that fails or does not exist fails the job
with its exit code and last output."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from shardwright.workers.manifest import committed

from ..runner.test_local_run import curve, shardwright_run, status, steps
from .test_command_spec import EXAMPLE

pytestmark = pytest.mark.slow

STEPS, INTERVAL, KILL_AT = 30, 10, 15


def job(tmp_path: Path, *, command: list[str] | None = None, max_restarts: int = 2) -> Path:
    doc = yaml.safe_load(EXAMPLE.read_text())
    doc["spec"]["training"]["steps"] = STEPS
    doc["spec"]["checkpoint"] = {"intervalSteps": INTERVAL, "keep": 2}
    doc["spec"]["failurePolicy"] = {"maxRestarts": max_restarts, "backoff": {"initialSeconds": 0.5}}
    if command is not None:
        doc["spec"]["workers"][0]["command"] = command
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def events(workdir: Path) -> list[dict]:
    return [json.loads(line) for line in (workdir / "events.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def baseline(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("baseline")
    run = shardwright_run(job(tmp), tmp / "wd")
    assert run.returncode == 0, run.stdout
    return tmp / "wd"


def test_the_user_script_completes_with_the_sdk_reporting(baseline):
    st = status(baseline)
    assert st["phase"] == "Complete" and st["step"] == STEPS and st["restarts"] == 0
    log = steps(baseline)
    assert [line["step"] for line in log] == list(range(1, STEPS + 1))
    assert st["loss"] == log[-1]["loss"] < 0.5 * log[0]["loss"]
    # Every rank's timings reach the straggler detector: one entry per rank per step.
    assert all(len(line["rankCompute"]) == len(line["rankBusy"]) == 2 for line in log)
    assert all(line["samples"] == [256, 256] and line["tokensPerSecond"] > 0 for line in log)
    assert [m["step"] for m in committed(baseline / "checkpoints")] == [20, 30]
    metrics = (baseline / "metrics.prom").read_text()
    for rank in (0, 1):
        assert f'shardwright_rank_step{{name="user-script",namespace="default",rank="{rank}"}} {STEPS}.0' in metrics


def test_a_killed_rank_resumes_from_the_last_commit_bit_identical(baseline, tmp_path):
    wd = tmp_path / "wd"
    run = shardwright_run(job(tmp_path), wd, "--inject", f"kill:rank=1:step={KILL_AT}")
    assert run.returncode == 0, run.stdout
    st = status(wd)
    assert st["phase"] == "Complete" and st["restarts"] == 1 and st["generation"] == 2
    failed = next(e for e in events(wd) if e["reason"] == "RankFailed")
    assert failed["message"].startswith("Rank 1 failed: CommandFailed: command ['python', 'examples/user-script/train.py'] exited with code 137")
    assert any(e["reason"] == "RestartedFromCheckpoint" and "resumes from step 10" in e["message"] for e in events(wd))
    trained = [line["step"] for line in steps(wd)]
    twice = sorted({s for s in trained if trained.count(s) > 1})
    assert twice and set(twice) <= set(range(INTERVAL + 1, KILL_AT)), twice  # only steps after the commit
    assert curve(wd) == curve(baseline)


@pytest.mark.parametrize(("command", "words"), [
    (["python", "-c", "import sys; print('no data at /data/train'); sys.exit(3)"], "exited with code 3; last output:\nno data at /data/train"),
    (["no-such-trainer"], "exited with code 127; last output:\ncannot start 'no-such-trainer': No such file or directory"),
], ids=["exits-3", "not-found"])
def test_a_failing_command_fails_the_job_with_its_reason(tmp_path, command, words):
    wd = tmp_path / "wd"
    run = shardwright_run(job(tmp_path, command=command, max_restarts=0), wd)
    assert run.returncode != 0
    st = status(wd)
    assert st["phase"] == "Failed"
    failed = next(c for c in st["conditions"] if c["type"] == "Failed")
    assert words in failed["message"], failed["message"]
