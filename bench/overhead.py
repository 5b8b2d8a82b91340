"""Orchestration overhead: ``shardwright run`` against a plain torch DDP script, side by side.

    .venv/bin/python bench/overhead.py [--steps 300] [--rounds 2]

Both train the same model on the same samples with the same settings (2 ranks, the
embedded default's model and data, no checkpoint inside the measured window). Throughput
is taken over the steady part of each run (steps 20 to the end) from the wall-clock time
at the end of each step on rank 0, so Ray start-up, group set-up and the final
checkpoint are excluded; the total wall time of each command is reported beside it.
Runs alternate (shardwright, plain, shardwright, plain, ...) so both see the same machine
load. Prints a markdown table with the ratio.
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
    subprocess.run(cmd, cwd=REPO, check=True, capture_output=True, env={**os.environ, "RAY_AUTH_MODE": "disabled"})
    return time.monotonic() - began


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    rows = {"shardwright run (Ray actors)": ([], []), "plain torch DDP (mp.spawn)": ([], [])}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        job = manifest(args.steps, tmp)
        doc = yaml.safe_load(job.read_text())
        tokens = doc["spec"]["data"]["globalBatch"] * doc["spec"]["data"]["seqLen"]
        for r in range(args.rounds):
            wd = tmp / f"sw{r}"
            wall = timed([sys.executable, "-m", "shardwright.operator.cli", "run", str(job), "--workdir", str(wd), "--no-progress"])
            rows["shardwright run (Ray actors)"][0].append(throughput(wd / "steps.jsonl", tokens))
            rows["shardwright run (Ray actors)"][1].append(wall)
            log = tmp / f"plain{r}.jsonl"
            wall = timed([sys.executable, str(REPO / "bench" / "plain_ddp.py"), str(job), str(log)])
            rows["plain torch DDP (mp.spawn)"][0].append(throughput(log, tokens))
            rows["plain torch DDP (mp.spawn)"][1].append(wall)
    (sw, sw_wall), (plain, plain_wall) = rows.values()
    print(f"steps per run: {args.steps}, rounds: {args.rounds}, steady window: steps {WARMUP_STEPS}-{args.steps}\n")
    print("| launcher | tokens/s (steady, median) | per round | wall time per run (median) |")
    print("| --- | ---: | --- | ---: |")
    for name, (rates, walls) in rows.items():
        print(f"| {name} | {statistics.median(rates):,.0f} | {', '.join(f'{x:,.0f}' for x in rates)} | {statistics.median(walls):.1f} s |")
    ratio = statistics.median(sw) / statistics.median(plain)
    best = max(sw) / max(plain)
    print(f"\nshardwright / plain throughput: median {ratio:.3f} (overhead {100 * (1 - ratio):+.1f}%), "
          f"best round {best:.3f} (overhead {100 * (1 - best):+.1f}%)")


if __name__ == "__main__":
    main()
