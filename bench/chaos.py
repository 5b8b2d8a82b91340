"""Seeded chaos on the embedded default: faults drawn from a seed strike real ``shardwright
run`` jobs, and every run's recorded history is checked against the fault-free run.

    .venv/bin/python bench/chaos.py --seed S --faults N [--runs K] [--workdir DIR]

Run ``i`` draws its plan from seed ``S + i`` (``bench/chaos_plan.py``: kills, kills during
a checkpoint write, hangs, damaged checkpoints, shrink and grow of an elastic job) and
prints it as the ``--inject`` flags that replay it. Each job size's fault-free reference
runs once. The invariants (``bench/chaos_check.py``): the job ends Complete, or Failed
with BackoffLimitExceeded when its plan spends the budget; its loss curve equals the
reference bit for bit at the same world size, within docs/determinism.md's tolerance
after a resize; restarts equal the faults that needed one; one generation at a time;
every due fault struck; only damaged checkpoints rejected. Prints a markdown table per
fault kind and per invariant, and the seed and plan of every broken invariant; exits 1
if any broke. The cluster half of issue 23 is not built yet.
"""

from __future__ import annotations

import argparse
import collections
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

if not __package__:  # run as a script: make ``bench`` importable like under ``python -m``
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import chaos_check, chaos_plan  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "tiny-train.yaml"
#: Seconds one ``shardwright run`` may take before it counts as stuck (and is killed).
RUN_TIMEOUT_S = 300


def shardwright_run(manifest: Path, workdir: Path, injects: list[str], timeout_s: float) -> chaos_check.History:
    """Run the CLI in its own process group; a run past ``timeout_s`` is killed and recorded
    with exit code 124 (its history up to then is still checked)."""
    cmd = [sys.executable, "-m", "shardwright.operator.cli", "run", str(manifest), "--workdir", str(workdir), "--no-progress"]
    cmd += [arg for text in injects for arg in ("--inject", text)]
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        output, _ = proc.communicate(timeout=timeout_s)
        code = proc.returncode
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        output, _ = proc.communicate()
        code = 124
    except BaseException:  # the harness itself stopped (SIGTERM, Ctrl-C): no run outlives it
        os.killpg(proc.pid, signal.SIGKILL)
        raise
    (workdir / "cli-output.txt").write_text(f"{output}\nexit code {code}\n")  # kept for a later look at the run
    return chaos_check.History.read(workdir, output, code)


class Harness:
    """Runs plans in ``root``, one fault-free reference per job size (the budget changes no step)."""

    def __init__(self, root: Path, timeout_s: float = RUN_TIMEOUT_S) -> None:
        self.root, self.timeout_s = root, timeout_s
        self.example = yaml.safe_load(EXAMPLE.read_text())
        self.references: dict[str, chaos_check.History] = {}

    def manifest(self, plan: chaos_plan.Plan, name: str) -> Path:
        path = self.root / f"{name}.yaml"
        path.write_text(yaml.safe_dump(plan.target.manifest(self.example, plan.max_restarts)))
        return path

    def reference(self, plan: chaos_plan.Plan) -> chaos_check.History:
        name = plan.target.name
        if name not in self.references:
            run = shardwright_run(self.manifest(plan, f"reference-{name}"), self.root / f"reference-{name}", [], self.timeout_s)
            if run.status.get("phase") != "Complete":
                raise RuntimeError(f"the fault-free {name} run did not complete: {run.output[-2000:]}")
            self.references[name] = run
        return self.references[name]

    def run(self, plan: chaos_plan.Plan) -> tuple[chaos_check.History, list[chaos_check.Verdict]]:
        reference = self.reference(plan)
        name = f"seed-{plan.seed}"
        run = shardwright_run(self.manifest(plan, name), self.root / name, plan.injects, self.timeout_s)
        return run, chaos_check.check(plan, run, reference)


def table(results: list[tuple[chaos_plan.Plan, chaos_check.History, list[chaos_check.Verdict]]]) -> str:
    """Markdown: per fault kind, how many were injected, struck and survived (struck in a run
    whose invariants all held); per invariant, runs that kept and broke it."""
    faults = collections.Counter()
    for plan, run, verdicts in results:
        held = all(v.ok for v in verdicts)
        for fault in plan.faults:
            kind = chaos_plan.kind_of(fault)
            hit = chaos_check.struck(plan, fault, run)
            faults[kind, "injected"] += 1
            faults[kind, "struck"] += hit
            faults[kind, "survived"] += hit and held
    kinds = sorted({kind for kind, _ in faults})
    lines = ["| fault | injected | struck | survived |", "| --- | ---: | ---: | ---: |"]
    lines += [f"| {k} | {faults[k, 'injected']} | {faults[k, 'struck']} | {faults[k, 'survived']} |" for k in kinds]
    total = [sum(faults[k, col] for k in kinds) for col in ("injected", "struck", "survived")]
    lines.append(f"| **all** | {total[0]} | {total[1]} | {total[2]} |")
    kept = collections.Counter((v.invariant, v.ok) for _, _, verdicts in results for v in verdicts)
    invariants = list(dict.fromkeys(v.invariant for _, _, verdicts in results for v in verdicts))
    lines += ["", "| invariant | runs kept | runs broken |", "| --- | ---: | ---: |"]
    lines += [f"| {name} | {kept[name, True]} | {kept[name, False]} |" for name in invariants]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, required=True, help="seed of the first run; run i uses seed + i")
    parser.add_argument("--faults", type=int, required=True, help="faults drawn per run")
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--workdir", type=Path, help="where the jobs run (kept); default: a temporary folder")
    parser.add_argument("--timeout", type=float, default=RUN_TIMEOUT_S, help="seconds per shardwright run")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="chaos-") as tmp:
        root = args.workdir or Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        harness = Harness(root, args.timeout)
        results, began = [], time.monotonic()
        signal.signal(signal.SIGTERM, signal.default_int_handler)  # `timeout` stops it: the finished runs still count
        try:
            for seed in range(args.seed, args.seed + args.runs):
                plan = chaos_plan.draw(seed, args.faults)
                print(plan.describe(), flush=True)
                run, verdicts = harness.run(plan)
                results.append((plan, run, verdicts))
                for v in verdicts:
                    print(f"  {'kept' if v.ok else 'BROKEN'} {v.invariant}: {v.detail}", flush=True)
        except KeyboardInterrupt:
            print("\nstopped: the run in progress is left out", flush=True)
        print(f"\n{len(results)} runs in {time.monotonic() - began:.0f} s (references included)\n")
        print(table(results))
        broken = [(plan, v) for plan, _, verdicts in results for v in verdicts if not v.ok]
        for plan, v in broken:
            print(f"\nbroken: {v.invariant}: {v.detail}\n  {plan.describe()}")
    return 1 if broken else 0


if __name__ == "__main__":
    sys.exit(main())
