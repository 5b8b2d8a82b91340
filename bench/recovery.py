"""Fault recovery on the embedded default: how fast, how much is lost, what a checkpoint costs.

    .venv/bin/python bench/recovery.py [--trials 3]

1. Kill a rank (``--inject kill:rank=1:step=25``, checkpoints every 10 steps) and read the
   step log and events: detection (the rank's death -> RankFailed), recovery (RankFailed ->
   first completed step of the new generation), steps lost (re-trained).
2. Training stall per checkpoint, asynchronous against synchronous ``dcp.save``, with the
   ``small`` preset (≈ 40 MB of parameters and AdamW state) and a checkpoint every 5 steps:
   the stall is the median wall time from a checkpointing step to the next step, minus the
   median of all other steps. Both modes run side by side, alternating, in one invocation.
Prints markdown tables.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def job(tmp: Path, name: str, **spec_edits) -> Path:
    doc = yaml.safe_load((REPO / "examples" / "tiny-train.yaml").read_text())
    for dotted, value in spec_edits.items():
        node = doc["spec"]
        *parents, leaf = dotted.split(".")
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def run(manifest: Path, workdir: Path, *args: str) -> None:
    cmd = [sys.executable, "-m", "shardwright.operator.cli", "run", str(manifest), "--workdir", str(workdir), "--no-progress", *args]
    subprocess.run(cmd, cwd=REPO, check=True, capture_output=True, env={**os.environ, "RAY_AUTH_MODE": "disabled"})


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def kill_trial(tmp: Path, trial: int) -> dict[str, float]:
    manifest = job(tmp, "kill", **{"training.steps": 40, "checkpoint.intervalSteps": 10, "failurePolicy.backoff.initialSeconds": 0.5})
    wd = tmp / f"kill{trial}"
    run(manifest, wd, "--inject", "kill:rank=1:step=25")
    steps, events = lines(wd / "steps.jsonl"), lines(wd / "events.jsonl")
    last_old = max(s["time"] for s in steps if s["generation"] == 1)
    first_new = min(s["time"] for s in steps if s["generation"] == 2)
    failed = next(e["time"] for e in events if e["reason"] == "RankFailed")
    retrained = sum(1 for s in steps if s["generation"] == 2 and s["step"] <= 25)
    return {"detect": failed - last_old, "recover": first_new - failed, "total": first_new - last_old, "lost": retrained}


def stall(tmp: Path, mode: str, trial: int) -> tuple[float, float]:
    """(blocking stall, total slowdown) per checkpoint, seconds, medians over the run.

    Blocking: how long the step loop waits in ``save`` (rank 0's step log). Slowdown: the
    extra wall time of the 5-step interval that contains a checkpoint against the same
    steps without one, which also counts a background writer competing for the CPU.
    """
    manifest = job(tmp, mode, **{"model.preset": "small", "data.seqLen": 64, "training.steps": 40,
                                 "checkpoint.intervalSteps": 5, "checkpoint.async": mode == "async", "checkpoint.keep": 2})
    wd = tmp / f"{mode}{trial}"
    run(manifest, wd)
    steps = lines(wd / "steps.jsonl")
    blocking = statistics.median(s["checkpointStallSeconds"] for s in steps if "checkpointStallSeconds" in s)
    plain = statistics.median(s["seconds"] for s in steps[5:])
    intervals = [steps[i + 5]["time"] - steps[i]["time"] for i in range(5, len(steps) - 5, 5)]
    return blocking, statistics.median(intervals) - 5 * plain


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--trials", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        kills = [kill_trial(tmp, t) for t in range(args.trials)]
        stalls = {"sync": [], "async": []}
        for t in range(args.trials):
            for mode in ("sync", "async"):
                stalls[mode].append(stall(tmp, mode, t))
    print("| kill -> recovery (2 ranks, tiny) | median | trials |")
    print("| --- | ---: | --- |")
    for key, label in (("detect", "death -> RankFailed (s)"), ("recover", "RankFailed -> first step of new generation (s)"),
                       ("total", "last step before the kill -> first new step (s)"), ("lost", "steps re-trained")):
        values = [k[key] for k in kills]
        print(f"| {label} | {statistics.median(values):.2f} | {', '.join(f'{v:.2f}' for v in values)} |")
    print()
    print("| checkpoint every 5 steps (small preset) | blocking stall, median (ms) | total slowdown per checkpoint, median (ms) |")
    print("| --- | ---: | ---: |")
    for mode, values in stalls.items():
        blocking = statistics.median(v[0] for v in values)
        slowdown = statistics.median(v[1] for v in values)
        print(f"| {mode} | {1000 * blocking:.1f} | {1000 * slowdown:.1f} |")
    for i, label in ((0, "blocking stall"), (1, "total slowdown")):
        ratio = statistics.median(v[i] for v in stalls["async"]) / statistics.median(v[i] for v in stalls["sync"])
        print(f"\nasync / sync {label}: {ratio:.2f}")


if __name__ == "__main__":
    main()
