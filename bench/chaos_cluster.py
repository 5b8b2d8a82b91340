"""Chaos on the real control plane: small TrainingJobs train on process-backed nodes under
the chart's two operator replicas while seeded faults strike; every run's invariants are
checked on what it recorded (docs/reliability.md, "On the cluster").

    .venv/bin/python bench/chaos_cluster.py --seed S --faults N [--runs K] [--jobs J]

Run ``i`` draws its plan from seed ``S + i`` (bench/chaos_cluster_plan.py). The reference
is one fault-free job of the same shape, run first. Exit 1 when an invariant broke.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import yaml  # noqa: E402

from bench import chaos_cluster_check, chaos_cluster_plan  # noqa: E402
from bench.chaos_cluster_env import JOB_LABEL, NS, ROOT, Cluster, PodRecorder, wait  # noqa: E402
from bench.chaos_cluster_faults import Faults, Strike  # noqa: E402

TERMINAL = ("Complete", "Failed")


def submit(cluster: Cluster, shape: chaos_cluster_plan.JobShape, names: list[str]) -> None:
    example = yaml.safe_load((ROOT / "examples" / "tiny-train.yaml").read_text())
    for name in names:
        cluster.kubectl("-n", NS, "apply", "-f", "-", input=json.dumps(shape.manifest(example, name)))


def finish(cluster: Cluster, names: list[str], timeout: float) -> dict[str, dict]:
    """Wait for every job to end; their final statuses."""
    wait(lambda: all((j.get("status") or {}).get("phase") in TERMINAL for n, j in cluster.jobs().items() if n in names)
         and set(names) <= set(cluster.jobs()), timeout, f"jobs {names} to end")
    return {n: j.get("status") or {} for n, j in cluster.jobs().items() if n in names}


def remove(cluster: Cluster, names: list[str]) -> list[str]:
    """Delete the jobs; what of theirs is left (pods, Services) two minutes later."""
    cluster.kubectl("-n", NS, "delete", "tj", *names, "--wait=false")

    def left() -> list[str]:
        out = cluster.json("-n", NS, "get", "pods,services", "-l", JOB_LABEL)["items"]
        return [f"{o['kind']}/{o['metadata']['name']}" for o in out if o["metadata"]["labels"].get(JOB_LABEL) in names]

    try:
        wait(lambda: not left(), 120, "pods and Services collected")
        return []
    except TimeoutError:
        return left()


def one_run(cluster: Cluster, plan: chaos_cluster_plan.Plan, shape, reference: dict, kinds, log) -> tuple[list, list, dict]:
    names = [f"chaos-{plan.seed}-{j}" for j in range(plan.jobs)]
    recorder = PodRecorder(cluster)
    recorder.start()
    faults = Faults(cluster, recorder, shape.steps)
    submit(cluster, shape, names)
    strikes = []
    try:
        wait(lambda: len(faults.running()) == len(names), 300, "every job Running")
        for n, fault in enumerate(plan.faults):
            if not faults.any_left():
                log(f"  every job near its end: the last {len(plan.faults) - n} faults of the plan not injected")
                break
            time.sleep(fault.delay_s)
            try:
                wait(lambda: faults.ready(fault.kind), 180, f"something for {fault.kind} to strike")
            except TimeoutError as e:
                log(f"  ({e}; striking anyway)")
            began = time.monotonic()
            try:
                strike = faults.strike(fault.kind, fault.pick)
            except Exception as e:  # noqa: BLE001 - the harness's own step failed (a kubectl timed out): not struck, the run goes on
                strike = Strike(fault.kind, detail=f"the harness failed: {type(e).__name__}: {e}")
            strikes.append(strike)
            log(f"  {fault.text():32} {'struck' if strike.struck else 'not yet'} {strike.target} {strike.detail} "
                f"restarts {strike.restarts} ({time.monotonic() - began:.0f} s)")
        faults.join()
        for strike in strikes:
            if strike.kind in ("hang", "node-lost"):
                log(f"  {strike.kind} {strike.target}: {'struck' if strike.struck else 'missed'}, {strike.detail}, "
                    f"restarts {strike.restarts}, disrupted {strike.disrupted}")
        statuses = finish(cluster, names, 1500)
    finally:
        # The jobs' events go with them: kept for whoever explains a broken invariant.
        for what in ("events", "trainingjobs"):
            with contextlib.suppress(subprocess.SubprocessError):
                out = cluster.kubectl("-n", NS, "get", what, "-o", "json", check=False, timeout=60)
                (cluster.state / f"{what}-{plan.seed}.json").write_text(out.stdout)
        leftovers = remove(cluster, names)
        recorder.stop()
    record = chaos_cluster_check.Record(statuses, strikes, recorder.overlaps, leftovers,
                                        chaos_cluster_plan.draw(plan.seed, len(plan.faults), plan.jobs, kinds) == plan,
                                        frozenset(recorder.generations))
    # Checked again later with `--check` (a rule of the check changed, a run explained).
    (cluster.state / f"record-{plan.seed}.json").write_text(json.dumps({"reference": reference, **record.to_json()}, indent=1))
    return strikes, chaos_cluster_check.check(record, reference), statuses


def recheck(paths: list[Path]) -> int:
    """The invariants of saved runs, checked again; 1 if any is broken."""
    broken = 0
    for path in paths:
        doc = json.loads(path.read_text())
        for v in chaos_cluster_check.check(chaos_cluster_check.Record.from_json(doc), doc["reference"]):
            broken += not v.ok
            print(f"{path.name}: {'ok    ' if v.ok else 'BROKEN'} {v.invariant}: {v.detail}")
    return 1 if broken else 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--faults", type=int, default=4, help="faults per run")
    p.add_argument("--runs", type=int, default=1)
    p.add_argument("--jobs", type=int, default=3, help="jobs training at once in each run")
    p.add_argument("--steps", type=int, default=chaos_cluster_plan.JobShape.steps)
    p.add_argument("--kinds", default="", help="comma-separated kinds struck in this order (default: drawn by weight)")
    p.add_argument("--minutes", type=float, default=None, help="start no run this many minutes after the harness started")
    p.add_argument("--workdir", type=Path, default=None, help="where the cluster's state and summary.json go")
    p.add_argument("--check", type=Path, nargs="+", default=None, metavar="RECORD",
                   help="check saved runs (record-SEED.json in a workdir) again instead of running")
    args = p.parse_args(argv)
    if args.check:
        return recheck(args.check)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="chaos-cluster-"))
    workdir.mkdir(parents=True, exist_ok=True)
    shape = chaos_cluster_plan.JobShape(steps=args.steps)
    kinds = tuple(k for k in args.kinds.split(",") if k)
    unknown = sorted(set(kinds) - set(chaos_cluster_plan.KINDS))
    if unknown:
        p.error(f"--kinds: unknown {', '.join(unknown)}; allowed: {', '.join(chaos_cluster_plan.KINDS)}")

    def log(text: str) -> None:
        print(f"{time.strftime('%H:%M:%S')} {text}", flush=True)

    cluster = Cluster(workdir)
    table: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    invariants: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    broken = []
    began = time.monotonic()
    try:
        cluster.start()
        log(f"cluster up in {workdir}")
        submit(cluster, shape, ["reference"])
        reference = finish(cluster, ["reference"], 900)["reference"]
        remove(cluster, ["reference"])
        log(f"reference: {reference.get('phase')} step {reference.get('step')} loss {reference.get('loss')!r}")
        for i in range(args.runs):
            if args.minutes is not None and time.monotonic() - began > args.minutes * 60:
                log(f"{args.minutes} minutes spent: {i} runs")
                break
            plan = chaos_cluster_plan.draw(args.seed + i, args.faults, args.jobs, kinds)
            log(plan.describe())
            strikes, verdicts, statuses = one_run(cluster, plan, shape, reference, kinds, log)
            survived = all(v.ok for v in verdicts)
            for s in strikes:
                hit = chaos_cluster_check.struck(s, statuses)
                table[s.kind].update(injected=1, struck=int(hit), survived=int(hit and survived))
            for v in verdicts:
                invariants[v.invariant].update(kept=int(v.ok), broken=int(not v.ok))
                log(f"  {'ok    ' if v.ok else 'BROKEN'} {v.invariant}: {v.detail}")
                if not v.ok:
                    broken.append({"seed": plan.seed, "invariant": v.invariant, "detail": v.detail})
            (workdir / "summary.json").write_text(json.dumps({"runs": i + 1, "faults": table, "invariants": invariants, "broken": broken}, indent=1))
    finally:
        cluster.stop()
    print("\n| fault | injected | struck | survived |\n| --- | ---: | ---: | ---: |")
    for kind in sorted(table):
        print(f"| {kind} | {table[kind]['injected']} | {table[kind]['struck']} | {table[kind]['survived']} |")
    total = sum(table.values(), collections.Counter())
    print(f"| **all** | {total['injected']} | {total['struck']} | {total['survived']} |")
    print("\n| invariant | runs kept | runs broken |\n| --- | ---: | ---: |")
    for name, c in invariants.items():
        print(f"| {name} | {c['kept']} | {c['broken']} |")
    return 1 if broken else 0


if __name__ == "__main__":
    sys.exit(main())
