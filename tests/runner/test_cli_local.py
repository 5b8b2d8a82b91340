"""The commands a new user meets first, without starting Ray: ``--version``; a finished job
run again; ``--inject`` checked against the job; the README's fault demo; and ``get``,
``status``, ``logs`` and ``plot`` on a job directory shaped as ``shardwright run`` leaves it.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from shardwright.operator import jobdir
from shardwright.operator.cli import main
from tests.support.manifests import example

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "tiny-train.yaml"
#: Seconds a command that starts no training may take, interpreter start included.
QUICK_S = 10


def status_doc(phase: str = "Complete", step: int = 120) -> dict:
    return {
        "phase": phase, "generation": 2, "worldSize": 2, "step": step, "loss": 1.4113, "restarts": 1,
        "startTime": "2026-01-01T00:00:00Z",
        "lastCheckpoint": {"step": 120, "uri": "ckpt/step-00000120", "worldSize": 2, "layout": "dp=2,sp=1"},
        "conditions": [{"type": "Complete", "status": "True", "reason": "TrainingComplete", "message": "Trained 120 steps", "lastTransitionTime": "2026-01-01T00:01:00Z"}],
    }


def make_job_dir(root: Path, name: str = "tiny-train", namespace: str = "default", phase: str = "Complete") -> jobdir.JobDir:
    """A job directory as a 2-rank run killed at step 45 and restarted from step 40 leaves it."""
    doc = example()
    doc["metadata"] = {"name": name, "namespace": namespace}
    job = jobdir.JobDir(root / ".shardwright" / namespace / name)
    job.log_dir.mkdir(parents=True)
    job.write_manifest(doc)
    job.status_file.write_text(json.dumps(status_doc(phase)))
    steps = [(1, s) for s in range(1, 46)] + [(2, s) for s in range(41, 121)]
    (job.path / "steps.jsonl").write_text("".join(
        json.dumps({"step": s, "loss": 4.0 / s**0.3, "tokensPerSecond": 30000.0 + s, "generation": g, "time": s}) + "\n" for g, s in steps
    ))
    events = [
        ("Warning", "RankFailed", "Rank 1 failed: rank process died; step 40 seen last, the last checkpoint is of step 40"),
        ("Normal", "RestartedFromCheckpoint", "Generation 2 (dp=2,sp=1 over 2 ranks) resumes from step 40"),
        ("Normal", "TrainingComplete", "Trained 120 steps"),
    ]
    (job.path / "events.jsonl").write_text("".join(json.dumps({"time": 0, "type": t, "reason": r, "message": m}) + "\n" for t, r, m in events))
    for rank in (0, 1):
        job.rank_log(rank).write_text(f"rank {rank}/2: generation 1 starts (process 10{rank})\nrank {rank}/2: complete at step 120\n")
    return job


@pytest.fixture
def finished(tmp_path, monkeypatch) -> jobdir.JobDir:
    monkeypatch.chdir(tmp_path)
    return make_job_dir(tmp_path)


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "shardwright.operator.cli", *args], cwd=cwd, capture_output=True, text=True, timeout=QUICK_S)


def test_version(capsys):
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0
    assert capsys.readouterr().out == "shardwright 0.1.0\n"


def test_a_finished_job_run_again_says_so_at_once(finished, tmp_path):
    began = time.monotonic()
    run = cli("run", str(EXAMPLE), "--inject", "kill:rank=1:step=50", cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    assert run.stdout == f"TrainingJob default/tiny-train is already complete at step 120 ({Path('.shardwright/default/tiny-train')}); --fresh to train it again\n"
    assert "loss" not in run.stderr and time.monotonic() - began < QUICK_S
    assert json.loads(finished.status_file.read_text())["phase"] == "Complete"  # nothing ran


@pytest.mark.parametrize("fault, why", [
    ("kill:rank=7:step=30", "kill:rank=7:step=30: the job has ranks 0-1, not rank 7"),
    ("hang:rank=0:step=500", "hang:rank=0:step=500: step 500 is after the job's last step (120)"),
], ids=["rank", "step"])
def test_inject_that_would_never_fire_is_refused(tmp_path, capsys, fault, why):
    assert main(["run", str(EXAMPLE), "--workdir", str(tmp_path / "wd"), "--inject", fault]) == 2
    assert capsys.readouterr().err == f"--inject {why}\n"
    assert not (tmp_path / "wd").exists()


def test_a_kill_before_the_first_checkpoint_is_said_to_restart_from_scratch(tmp_path, capsys, monkeypatch):
    from shardwright.operator import runner

    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    started = []
    monkeypatch.setattr(runner, "run", lambda job, settings: started.append(settings.faults) or SimpleNamespace(exit_code=0))
    assert main(["run", str(EXAMPLE), "--workdir", str(tmp_path / "wd"), "--inject", "kill:rank=1:step=30"]) == 0
    assert capsys.readouterr().err == "--inject kill:rank=1:step=30: before the first checkpoint (step 40), so the restart starts from step 0\n"
    assert [f.step for f in started[0]] == [30]  # a note, not a refusal


def test_readme_fault_demo_restarts_from_a_checkpoint():
    """Right after `make run` the job is complete, and a kill before the first checkpoint
    restarts from scratch: the README's demo must train afresh and fail after a checkpoint."""
    demos = [line for line in (REPO / "README.md").read_text().splitlines() if "--inject kill:" in line]
    assert demos
    for line in demos:
        words = shlex.split(line.split("#")[0])
        manifest = yaml.safe_load((REPO / next(w for w in words if w.endswith(".yaml"))).read_text())
        step = int(re.search(r"kill:\S*step=(\d+)", line).group(1))
        assert "--fresh" in words, line
        assert step > manifest["spec"]["checkpoint"]["intervalSteps"], line


def test_get_lists_every_job_of_this_machine(finished, tmp_path, capsys):
    make_job_dir(tmp_path, name="other", namespace="ml", phase="Running")
    assert main(["get"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["NAMESPACE", "NAME", "KIND", "PHASE", "STEP", "LOSS", "RESTARTS", "AGE"]
    assert lines[1].split()[:7] == ["default", "tiny-train", "TrainingJob", "Complete", "120/120", "1.4113", "1"]
    assert lines[2].split()[:4] == ["ml", "other", "TrainingJob", "Running"]
    assert re.fullmatch(r"\d+d", lines[1].split()[7])


def test_status_by_name_or_file_starts_with_a_summary(finished, capsys):
    for target in ("tiny-train", str(EXAMPLE)):
        assert main(["status", target]) == 0
        out = capsys.readouterr().out.splitlines()
        assert out[0] == "default/tiny-train: Complete at step 120/120, loss 1.4113, 2 ranks, generation 2, restarts 1, last checkpoint step 120"
        assert len(out) < 15 and any("RestartedFromCheckpoint" in line for line in out)
    assert main(["status", "tiny-train", "-o", "json"]) == 0
    assert json.loads(capsys.readouterr().out) == status_doc()
    assert main(["status", "tiny-train", "-o", "yaml"]) == 0
    assert yaml.safe_load(capsys.readouterr().out) == status_doc()
    assert main(["status", "nope"]) == 2
    assert "nope: no job of that name under .shardwright/ (jobs there: default/tiny-train)" in capsys.readouterr().err
    assert main(["status", "jobs/missing.yaml"]) == 2
    assert capsys.readouterr().err == "jobs/missing.yaml: no such file\n"


def test_logs_of_every_rank_or_one(finished, capsys):
    assert main(["logs", "tiny-train"]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "[rank 0] rank 0/2: generation 1 starts (process 100)", "[rank 0] rank 0/2: complete at step 120",
        "[rank 1] rank 1/2: generation 1 starts (process 101)", "[rank 1] rank 1/2: complete at step 120",
    ]
    assert main(["logs", "tiny-train", "--rank", "1"]) == 0
    assert capsys.readouterr().out == "rank 1/2: generation 1 starts (process 101)\nrank 1/2: complete at step 120\n"
    assert main(["logs", "tiny-train", "--rank", "5"]) == 1
    assert "no log of rank 5" in capsys.readouterr().err


def test_logs_follow_prints_new_lines_until_the_job_settles(finished, capsys, monkeypatch):
    monkeypatch.setattr(jobdir, "FOLLOW_QUIET_S", 0.3)
    finished.status_file.write_text(json.dumps(status_doc("Running", step=100)))

    def finish() -> None:
        time.sleep(0.5)
        with finished.rank_log(1).open("a") as f:
            f.write("rank 1/2: a late line")  # its end comes later: printed whole, once
            f.flush()
            time.sleep(0.5)
            f.write(" ends\n")
        finished.status_file.write_text(json.dumps(status_doc()))

    writer = threading.Thread(target=finish)
    writer.start()
    follower = threading.Thread(target=main, args=(["logs", "tiny-train", "--rank", "1", "-f"],), daemon=True)
    follower.start()
    follower.join(timeout=QUICK_S)
    writer.join(timeout=QUICK_S)
    assert not follower.is_alive(), "logs -f did not end after the job settled"
    assert capsys.readouterr().out.splitlines()[-1] == "rank 1/2: a late line ends"


def test_plot_without_matplotlib_says_so_in_one_line(finished, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib raises ImportError
    monkeypatch.delitem(sys.modules, "shardwright.operator.plot", raising=False)
    assert main(["plot", "tiny-train"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "needs matplotlib" in err and "pip install 'matplotlib>=3.8'" in err


def test_plot_writes_a_png(finished, capsys):
    assert main(["plot", "tiny-train"]) == 0
    out = Path(capsys.readouterr().out.strip())
    assert out.resolve() == finished.path / "plot.png"
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 10_000
