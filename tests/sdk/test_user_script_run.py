"""`shardwright run` of the example user script (examples/user-script): real Ray actors, real
child processes, real gloo and DCP. It completes with status from the SDK's reporter; a
killed rank restarts the generation, which resumes from the last commit and reproduces the
uninterrupted loss curve bit for bit, and so does one stopped with Ctrl-C and run again; a
slow rank is flagged as a straggler from the SDK's timings; a program that fails or does not
exist fails the job with its exit code and last output."""

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


def job(tmp_path: Path, *, command: list[str] | None = None, max_restarts: int = 2, steps: int = STEPS,
        interval: int = INTERVAL) -> Path:
    doc = yaml.safe_load(EXAMPLE.read_text())
    doc["spec"]["training"]["steps"] = steps
    # Synchronous commits: with async a commit can still be in flight when a rank is killed
    # five steps later (then the restart rightly starts further back).
    doc["spec"]["checkpoint"] = {"intervalSteps": interval, "keep": 2, "async": False}
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
    # Each manifest keeps its step's loss (the mean over ranks), as the trainer's do.
    assert [(m["step"], m["loss"]) for m in committed(baseline / "checkpoints")] == [(20, log[19]["loss"]), (30, log[29]["loss"])]
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


def test_ctrl_c_checkpoints_at_the_next_step_and_a_second_run_resumes_bit_identical(baseline, tmp_path):
    wd = tmp_path / "wd"
    # Slowed (a sleep: the numbers stay the same) so that Ctrl-C lands well before the last
    # step; no interval commit, so the one checkpoint is the stop's however late it lands.
    first = shardwright_run(job(tmp_path, interval=STEPS + 1), wd, "--inject", "slow:rank=0:factor=20", interrupt_after=5)
    assert first.returncode != 0 and status(wd)["phase"] != "Complete", first.stdout
    stopped_at = committed(wd / "checkpoints")[-1]["step"]  # SIGTERM -> sdk.should_stop() -> maybe_save
    assert 5 <= stopped_at < STEPS, stopped_at
    second = shardwright_run(job(tmp_path), wd)
    assert second.returncode == 0, second.stdout
    assert status(wd)["phase"] == "Complete"
    assert any(e["reason"] == "GenerationStarted" and e["message"].endswith(f"starts from step {stopped_at}") for e in events(wd))
    assert curve(wd) == curve(baseline)


def programs_of(workdir: Path) -> list[int]:
    """PIDs of live processes whose environment names ``workdir`` (the job's rank programs)."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and str(workdir).encode() in (proc / "environ").read_bytes():
                found.append(int(proc.name))
        except OSError:  # gone, or not ours
            continue
    return found


def test_a_hung_rank_is_ended_with_its_program_and_the_job_resumes(tmp_path):
    wd = tmp_path / "wd"
    doc = yaml.safe_load(job(tmp_path).read_text())
    doc["spec"]["failurePolicy"]["progressDeadlineSeconds"] = 8
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(doc))
    run = shardwright_run(tmp_path / "job.yaml", wd, "--inject", "hang:rank=0:step=15")
    assert run.returncode == 0, run.stdout
    hung = next(e for e in events(wd) if e["reason"] == "ProgressDeadlineExceeded")
    assert "ranks not waiting in a collective: [0]" in hung["message"]
    assert status(wd)["phase"] == "Complete" and status(wd)["restarts"] == 1
    assert programs_of(wd) == []  # the hung program died with its rank process


def test_a_slow_rank_is_flagged_as_a_straggler(tmp_path):
    wd = tmp_path / "wd"
    # Steps of a few milliseconds: enough of them that the controller's polls (every 0.5 s)
    # see the detector's window and minSeconds while the job runs.
    run = shardwright_run(job(tmp_path, steps=600), wd, "--inject", "slow:rank=1:factor=5")
    assert run.returncode == 0, run.stdout
    flagged = status(wd)["stragglers"]
    assert [f["rank"] for f in flagged] == [1] and flagged[0]["score"] < 0.5, flagged
    assert any(e["reason"] == "StragglerDetected" and e["message"].startswith("Rank 1 ") for e in events(wd))


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
