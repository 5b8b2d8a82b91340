"""Straggler detection and rebalancing on the embedded default (real ranks, ``--inject slow``).

    .venv/bin/python bench/stragglers.py [--seeds 3] [--plot docs/stragglers-timeline.png]

1. Detection: 2 ranks, seqLen 128, globalBatch 96 (about 0.25 s a step), default policy
   (threshold 0.75, minSteps 5, minSeconds 1), rank 1 slowed 1.25x / 1.5x / 2x from step 15,
   and clean runs; per seed. Detection rate, latency in steps (flag step - first slow step),
   false flags (a flag on any other rank, or before the slowdown) per step judged.
2. Rebalancing: ``action: rebalance``, one rank slowed from step 20, 60 steps; 2 ranks at
   1.5x and 4 ranks at 2x (rank 2), each beside a clean run of the same job. Throughput as
   the critical path (median over steps of the longest busy time of any rank: the step
   time with one core per rank) and as wall-clock tokens/s (this host has 2 cores, so 4
   ranks share them and the wall clock says little); regained = (slowed - rebalanced) /
   (slowed - clean); regainable: the same against the best any shares can do, since the
   slow rank's lost capacity cannot be moved elsewhere. Balance: per step, the best step
   time for the speeds measured in that step over the step's critical path (1.0 when no
   rank waits), clean steps (before the slowdown) / slowed / rebalanced; judged within each
   step, so the host's load, which moves all ranks together, cancels out.
3. With ``--plot``: every rank's per-step busy and wall time over the 2-rank run, with the
   slowdown, the flag and the share switch marked.

Prints markdown tables; the numbers are in docs/benchmarks-stragglers.md.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
SLOW_FROM_DETECT = 15
SLOW_FROM_REBALANCE = 20


def job(tmp: Path, name: str, *, replicas: int = 2, steps: int = 40, action: str = "report", seed: int = 0) -> Path:
    doc = yaml.safe_load((REPO / "examples" / "tiny-train.yaml").read_text())
    spec = doc["spec"]
    spec["workers"][0]["replicas"] = replicas
    spec["training"].update(steps=steps, seed=seed)
    spec["data"].update(seqLen=128, globalBatch=96, microBatch=48, seed=seed)
    spec["checkpoint"] = {"intervalSteps": 50, "keep": 1}
    spec["stragglerPolicy"] = {"action": action}
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def run(manifest: Path, workdir: Path, *inject: str) -> Path:
    args = [a for fault in inject for a in ("--inject", fault)]
    cmd = [sys.executable, "-m", "shardwright.operator.cli", "run", str(manifest), "--workdir", str(workdir), "--fresh", "--no-progress", *args]
    done = subprocess.run(cmd, cwd=REPO, env={**os.environ, "RAY_AUTH_MODE": "disabled"}, capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        raise RuntimeError(f"{manifest.name} {inject}: exit {done.returncode}\n{done.stdout[-2000:]}")
    return workdir


def lines(workdir: Path) -> list[dict]:
    return [json.loads(line) for line in (workdir / "steps.jsonl").read_text().splitlines()]


def flags(workdir: Path) -> list[tuple[int, int]]:
    """(rank, step) of every StragglerDetected event."""
    out = []
    for line in (workdir / "events.jsonl").read_text().splitlines():
        event = json.loads(line)
        if event["reason"] == "StragglerDetected":
            rank, step = map(int, re.search(r"Rank (\d+) .* at step (\d+)", event["message"]).groups())
            out.append((rank, step))
    return out


def detection(tmp: Path, seeds: int) -> list[dict]:
    rows = []
    for factor in (None, 1.25, 1.5, 2.0):
        latencies, detected, false, judged = [], 0, 0, 0
        for seed in range(seeds):
            wd = tmp / f"detect-{factor}-{seed}"
            inject = (f"slow:rank=1:factor={factor}:step={SLOW_FROM_DETECT}",) if factor else ()
            run(job(tmp, f"detect-{seed}", seed=seed), wd, *inject)
            steps = len(lines(wd))
            judged += steps
            hits = [(r, s) for r, s in flags(wd) if factor and r == 1 and s >= SLOW_FROM_DETECT]
            false += len(flags(wd)) - len(hits)
            if hits:
                detected += 1
                latencies.append(hits[0][1] - SLOW_FROM_DETECT)
            print(f"  slow {factor or 'clean'} seed {seed}: flags {flags(wd)}", file=sys.stderr)
        rows.append({
            "slowdown": f"{factor}x" if factor else "clean",
            "runs": seeds,
            "detected": f"{detected}/{seeds}" if factor else "-",
            "latency_steps": f"{statistics.median(latencies):g} (max {max(latencies)})" if latencies else "-",
            "false_flags_per_step": f"{false / judged:.4f} ({false} in {judged})",
        })
    return rows


def critical_path(log: list[dict], first: int, last: int) -> float:
    return statistics.median(max(line["rankBusy"]) for line in log if first <= line["step"] <= last)


def balance(log: list[dict], first: int, last: int) -> float:
    """Median over steps of (best step time for the speeds measured in that step) / (the
    step's critical path); 1.0 when no rank waits. The host's load cancels out within a step."""
    def one(line):
        speed = sum(n / b for n, b in zip(line["samples"], line["rankBusy"]))
        return sum(line["samples"]) / speed / max(line["rankBusy"])
    return statistics.median(one(line) for line in log if first <= line["step"] <= last)


def wall_rate(log: list[dict], first: int, last: int) -> float:
    """Samples per second over steps ``first..last`` from the step log's wall clock."""
    span = [line for line in log if first - 1 <= line["step"] <= last]
    return (len(span) - 1) * 96 / (span[-1]["time"] - span[0]["time"])


def rebalance(tmp: Path, replicas: int, rank: int, factor: float, steps: int = 60) -> tuple[dict, Path]:
    manifest = job(tmp, f"rebalance-{replicas}", replicas=replicas, steps=steps, action="rebalance")
    clean = run(manifest, tmp / f"rebalance-{replicas}-clean")
    wd = run(manifest, tmp / f"rebalance-{replicas}-slow", f"slow:rank={rank}:factor={factor}:step={SLOW_FROM_REBALANCE}")
    log, base = lines(wd), lines(clean)
    switched = next(line["step"] for line in log if line["samples"] != log[0]["samples"])
    flagged = next(s for r, s in flags(wd) if r == rank)
    c = critical_path(base, SLOW_FROM_REBALANCE + 1, steps)
    s = critical_path(log, SLOW_FROM_REBALANCE + 1, switched - 1)
    r = critical_path(log, switched + 3, steps)
    best = c * replicas / (replicas - 1 + 1 / factor)
    bc, bs, br = balance(log, 5, SLOW_FROM_REBALANCE - 1), balance(log, SLOW_FROM_REBALANCE + 1, switched - 1), balance(log, switched + 3, steps)
    wc, ws, wr = wall_rate(base, SLOW_FROM_REBALANCE + 1, steps), wall_rate(log, SLOW_FROM_REBALANCE + 1, switched - 1), wall_rate(log, switched + 3, steps)
    loss_diff = max(abs(a["loss"] - b["loss"]) for a, b in zip(base, log))
    row = {
        "ranks": replicas, "slowdown": f"{factor}x rank {rank}", "flagged_at": flagged, "shares_from": switched,
        "samples_after": log[-1]["samples"],
        "critical_path_ms": f"{c * 1e3:.0f} / {s * 1e3:.0f} / {r * 1e3:.0f} (best {best * 1e3:.0f})",
        "balance": f"{bc:.2f} / {bs:.2f} / {br:.2f}", "balance_regained": f"{(br - bs) / (bc - bs):.0%}",
        "regained": f"{(s - r) / (s - c):.0%}", "of_regainable": f"{(s - r) / (s - best):.0%}",
        "wall_samples_per_s": f"{wc:.0f} / {ws:.0f} / {wr:.0f}",
        "wall_regained": f"{(wr - ws) / (wc - ws):.0%}" if wc > ws else "n/a",
        "max_loss_diff": f"{loss_diff:.1e}",
    }
    return row, wd


def plot(workdir: Path, out: Path, rank: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    log = lines(workdir)
    steps = [line["step"] for line in log]
    switched = next(line["step"] for line in log if line["samples"] != log[0]["samples"])
    flagged = next(s for r, s in flags(workdir) if r == rank)
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(9, 6), sharex=True)
    for r in range(len(log[0]["rankBusy"])):
        top.plot(steps, [line["rankBusy"][r] * 1e3 for line in log], label=f"rank {r}" + (" (slowed)" if r == rank else ""))
        bottom.plot(steps, [(line["rankCompute"][r] + line["rankWait"][r]) * 1e3 for line in log], label=f"rank {r}")
    top.set_ylabel("busy compute per step (ms)")
    bottom.set_ylabel("wall compute + wait (ms)")
    bottom.set_xlabel("step")
    for ax in (top, bottom):
        ax.axvline(SLOW_FROM_REBALANCE, color="tab:red", linestyle="--", label=f"slowdown 1.5x (step {SLOW_FROM_REBALANCE})")
        ax.axvline(flagged, color="tab:orange", linestyle=":", label=f"flagged (step {flagged})")
        ax.axvline(switched, color="tab:green", linestyle="-.", label=f"new shares {log[-1]['samples']} (step {switched})")
        ax.grid(alpha=0.3)
    top.legend(fontsize=8, loc="upper left")
    top.set_title("Straggler on 2 local ranks: detection and live rebalancing (2-core CPU, no GPU)")
    fig.tight_layout()
    fig.savefig(out, dpi=110)


def table(rows: list[dict]) -> str:
    keys = list(rows[0])
    out = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    out += ["| " + " | ".join(str(row[k]) for k in keys) + " |" for row in rows]
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--plot", type=Path, help="write the timeline plot here (needs .[bench]: matplotlib)")
    parser.add_argument("--skip-detection", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="sw-bench-stragglers-") as tmp:
        tmp = Path(tmp)
        if not args.skip_detection:
            print("## Detection\n\n" + table(detection(tmp, args.seeds)) + "\n", flush=True)
        two, wd = rebalance(tmp, 2, 1, 1.5)
        if args.plot:
            plot(wd, args.plot, rank=1)
            print(f"plot: {args.plot}")
        four, _ = rebalance(tmp, 4, 2, 2.0)
        print("## Rebalancing (clean / slowed / rebalanced)\n\n" + table([two, four]) + "\n")


if __name__ == "__main__":
    main()
