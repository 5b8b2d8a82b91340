"""What a new user sees of a real local run (real Ray actors, gloo, DCP), read through a pipe:
a killed rank reported by our event alone, the output in the order things happened, the
ranks' final metrics, each rank's output kept beside the job, and a run whose reader goes
away (``| head -3``) still completing.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
from pathlib import Path

import pytest

from .test_faults import fault_job
from .test_local_run import REPO, RUN_TIMEOUT_S, SHARDWRIGHT, shardwright_run, status

pytestmark = pytest.mark.slow

#: fault_job's length: checkpoints every 10 steps.
STEPS = 40


@pytest.fixture(scope="module")
def killed(tmp_path_factory) -> tuple[Path, Path, str]:
    """A 2-rank run whose rank 1 is killed after step 25, in ``.shardwright/`` of a folder;
    returns the folder, the job's directory and what the run printed (stdout and stderr)."""
    home = tmp_path_factory.mktemp("home")
    workdir = home / ".shardwright" / "default" / "tiny-train"
    run = shardwright_run(fault_job(home), workdir, "--inject", "kill:rank=1:step=25")
    assert run.returncode == 0, run.stdout
    return home, workdir, run.stdout


def cli(home: Path, *args: str) -> str:
    done = subprocess.run([*SHARDWRIGHT, *args], cwd=home, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_a_killed_rank_is_told_by_our_event_not_rays_warning(killed):
    _, _, out = killed
    assert "(raylet)" not in out and "OOM" not in out and "\x1b[" not in out, out
    assert "at least" not in out
    assert re.search(r"RankFailed: Rank 1 failed: .*; step \d+ seen last, the last checkpoint is of step \d+\n", out), out


def test_piped_output_keeps_the_order_of_what_happened(killed):
    lines = killed[2].splitlines()
    last_step = max(i for i, line in enumerate(lines) if line.startswith("step "))
    assert lines[last_step].startswith(f"step {STEPS}/{STEPS} ")
    done = next(i for i, line in enumerate(lines) if "TrainingComplete" in line)
    assert last_step < done < next(i for i, line in enumerate(lines) if line.startswith("TrainingJob "))


def test_metrics_prom_is_the_ranks_final_scrape(killed):
    _, workdir, _ = killed
    metrics = (workdir / "metrics.prom").read_text()
    final = status(workdir)
    for rank in (0, 1):
        labels = f'{{name="tiny-train",namespace="default",rank="{rank}"}}'
        assert f"shardwright_rank_step{labels} {STEPS}.0\n" in metrics
        loss = float(re.search(rf"shardwright_rank_loss_nats{re.escape(labels)} (\S+)", metrics).group(1))
        assert loss == pytest.approx(final["loss"], rel=1e-6)


def test_each_rank_keeps_its_output_beside_the_job(killed):
    home, workdir, _ = killed
    rank1 = (workdir / "logs" / "rank-1.log").read_text()
    assert "rank 1/2: generation 1 starts" in rank1 and "rank 1/2: generation 2 starts" in rank1
    assert "rank 1: injected fault kill after step 25 (generation 1): exiting with code 137" in rank1
    assert rank1.rstrip().endswith(f"rank 1/2: complete at step {STEPS}")
    assert cli(home, "logs", "tiny-train", "--rank", "1") == rank1
    rank0 = cli(home, "logs", "tiny-train").splitlines()
    assert rank0[0].startswith("[rank 0] rank 0/2: generation 1 starts")
    assert cli(home, "get").splitlines()[1].split()[:7] == ["default", "tiny-train", "TrainingJob", "Complete", f"{STEPS}/{STEPS}", f"{status(workdir)['loss']:.4f}", "1"]
    assert cli(home, "status", "tiny-train").startswith(f"default/tiny-train: Complete at step {STEPS}/{STEPS}, loss ")


def test_a_run_whose_reader_goes_away_completes(tmp_path):
    """``shardwright run ... 2>&1 | head -3``: the output is a view; the run goes on and its
    status says how it ended."""
    workdir = tmp_path / "wd"
    cmd = [*SHARDWRIGHT, "run", str(fault_job(tmp_path)), "--workdir", str(workdir), "--no-progress"]
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        head = [proc.stdout.readline() for _ in range(3)]
        proc.stdout.close()  # what head does after its third line
        code = proc.wait(timeout=RUN_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        raise
    assert head[0].startswith("Normal  Created"), head
    assert code == 0
    final = status(workdir)
    assert final["phase"] == "Complete" and final["step"] == STEPS
    assert json.loads((workdir / "steps.jsonl").read_text().splitlines()[-1])["step"] == STEPS
