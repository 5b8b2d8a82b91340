"""Orchestration overhead: ``shardwright run`` against a plain torch DDP script, side by side.

    .venv/bin/python bench/overhead.py [--steps 300] [--rounds 2]

Both train the same model on the same samples with the same settings (2 ranks, the
embedded default's model and data, no checkpoint inside the measured window). A third
launcher runs Shardwright's worker alone (``bench/worker_alone.py``: mp.spawn, no Ray, no
controller), which splits the overhead into the worker's share and the orchestration's.
Throughput is taken over the steady part of each run (steps 20 to the end) from the
wall-clock time at the end of each step on rank 0, so Ray start-up, group set-up and the
final checkpoint are excluded; the total wall time of each command is reported beside it.
Each round runs all three back to back, the order rotating every round; every ratio is
the median of the rounds' ratios, since the runs of a round see the same machine and a
shared host's speed drifts by 10% and more over minutes. Prints a markdown table, every
round's ratios, and their medians.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
WARMUP_STEPS = 20
#: Seconds one run may take before the bench gives up on it (a hung run, not a slow one).
TIMEOUT_S = 600
SHARDWRIGHT = "shardwright run (Ray actors)"
WORKER = "Shardwright worker alone (mp.spawn)"
PLAIN = "plain torch DDP (mp.spawn)"


def manifest(steps: int, workdir: Path) -> Path:
    doc = yaml.safe_load((REPO / "examples" / "tiny-train.yaml").read_text())
    doc["spec"]["training"]["steps"] = steps
    doc["spec"]["checkpoint"]["intervalSteps"] = steps  # one save, after the last step
    path = workdir / "bench.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def throughput(log: Path, tokens_per_step: int) -> float:
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    window = [line["time"] for line in lines if line["step"] >= WARMUP_STEPS]
    return tokens_per_step * (len(window) - 1) / (window[-1] - window[0])


def timed(cmd: list[str]) -> float:
    began = time.monotonic()
    subprocess.run(cmd, cwd=REPO, check=True, capture_output=True, timeout=TIMEOUT_S, env={**os.environ, "RAY_AUTH_MODE": "disabled"})
    return time.monotonic() - began


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        job = manifest(args.steps, tmp)
        doc = yaml.safe_load(job.read_text())
        tokens = doc["spec"]["data"]["globalBatch"] * doc["spec"]["data"]["seqLen"]
        launchers = {
            SHARDWRIGHT: lambda out: [sys.executable, "-m", "shardwright.operator.cli", "run", str(job), "--workdir", str(out), "--no-progress"],
            WORKER: lambda out: [sys.executable, str(REPO / "bench" / "worker_alone.py"), str(job), str(out)],
            PLAIN: lambda out: [sys.executable, str(REPO / "bench" / "plain_ddp.py"), str(job), str(out / "steps.jsonl")],
        }
        rows: dict[str, tuple[list[float], list[float]]] = {name: ([], []) for name in launchers}
        names = list(launchers)
        for r in range(args.rounds):
            # The order rotates every round, so that none always follows another (page
            # cache, a neighbour's load that comes and goes).
            for name in names[r % len(names):] + names[: r % len(names)]:
                out = tmp / f"{r}-{names.index(name)}"
                out.mkdir()
                rows[name][1].append(timed(launchers[name](out)))
                rows[name][0].append(throughput(out / "steps.jsonl", tokens))
    print(f"steps per run: {args.steps}, rounds: {args.rounds}, steady window: steps {WARMUP_STEPS}-{args.steps}\n")
    print("| launcher | tokens/s (steady, median) | per round | wall time per run (median) |")
    print("| --- | ---: | --- | ---: |")
    for name, (rates, walls) in rows.items():
        print(f"| {name} | {statistics.median(rates):,.0f} | {', '.join(f'{x:,.0f}' for x in rates)} | {statistics.median(walls):.1f} s |")
    print()
    for a, b, what in ((SHARDWRIGHT, PLAIN, "overhead"), (WORKER, PLAIN, "the worker's share"), (SHARDWRIGHT, WORKER, "orchestration's share")):
        paired = [x / y for x, y in zip(rows[a][0], rows[b][0])]
        ratio = statistics.median(paired)
        print(f"{a.split(' (')[0]} / {b.split(' (')[0]}, round by round: {', '.join(f'{x:.3f}' for x in paired)}; "
              f"median {ratio:.3f} ({what} {100 * (1 - ratio):+.1f}%)")


if __name__ == "__main__":
    main()
