"""How the operator keeps up with many TrainingJobs on a real control plane with KWOK nodes.

    .venv/bin/python bench/operator_scale_kwok.py --jobs 100 1000 --nodes 1000 --rate 5

For each N a fresh local control plane (e2e/cluster: etcd, kube-apiserver, controller
manager, scheduler) with KWOK and ``--nodes`` simulated 8-GPU H100 nodes; ``shardwright
operator`` runs out of cluster in its own process under a ServiceAccount; N TrainingJobs
(2 one-GPU ranks each) are created at ``--rate`` per second; the scheduler binds their
pods, KWOK runs them, and the harness ends each generation (bench/operator_scale_harness.py),
failing one pod of every ``--fail-every``-th job's first generation. Prints, per N: time
to place all, create-to-bound and failure-to-next-generation percentiles, the operator's
CPU, RSS and API requests (from the audit log), and the API server's request latency
(its /metrics). Results: docs/benchmarks-operator.md. bench/operator_scale.py measures
the operator alone against KMock.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

if not __package__:  # run as a script: make ``bench`` importable like under ``python -m``
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.operator_scale_harness import ScaleRun, add_nodes  # noqa: E402
from e2e.cluster import session  # noqa: E402
from tests.operator.kubeapi import Api  # noqa: E402

COLUMNS = [("jobs", "jobs"), ("rate_per_s", "target / s"), ("arrivals_per_s", "arrivals / s"), ("placed", "placed"), ("complete", "Complete"),
           ("place_all_s", "all placed (s)"), ("bound_p50_s", "create→bound p50 (s)"), ("bound_p99_s", "p99 (s)"),
           ("restarted", "restarts"), ("unasked_generations", "restarts not caused"), ("restart_p50_s", "failure→next gen bound p50 (s)"), ("restart_p99_s", "p99 (s)"),
           ("operator_cpu_s", "operator CPU (s)"), ("operator_rss_peak_mib", "peak RSS (MiB)"), ("rss_per_job_kib", "RSS / job (KiB)"),
           ("operator_requests_per_s", "operator API req / s"), ("apiserver_requests_per_s", "API server req / s"),
           ("apiserver_p50_ms", "API server p50 (ms)"), ("apiserver_p99_ms", "p99 (ms)"), ("load", "load avg")]


def one_cluster(n: int, args: argparse.Namespace) -> dict:
    """A fresh control plane with the nodes, one run of ``n`` jobs, then everything stopped."""
    state = Path(tempfile.mkdtemp(prefix="shardwright-scale-"))
    cp = session.control_plane(state)
    cp.start()
    try:
        session.start_kwok(cp)
        api = Api(cp)
        began = time.monotonic()
        add_nodes(api, "gpu", args.nodes)
        print(f"{args.nodes} KWOK nodes Ready after {time.monotonic() - began:.0f} s", file=sys.stderr, flush=True)
        cp.kubectl("create", "namespace", "scale")
        while cp.kubectl("-n", "scale", "get", "serviceaccount", "default", check=False).returncode:
            time.sleep(0.3)  # pods are refused until the service-account controller made it
        run = ScaleRun(cp, "scale", state, jobs=n, rate=args.rate, fail_every=args.fail_every, hold_s=args.hold,
                       timeout_s=args.timeout, profile=args.profile)
        report = run.run()
        report["nodes"] = args.nodes
        report["load"] = "{:.1f} {:.1f} {:.1f}".format(*os.getloadavg())
        if args.profile:
            shutil.copy(state / "operator.prof", f"operator-{n}.prof")
        return report
    finally:
        cp.stop()
        shutil.rmtree(state, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, nargs="+", default=[100, 1000])
    parser.add_argument("--nodes", type=int, default=1000, help="KWOK GPU nodes (8 GPUs each)")
    parser.add_argument("--rate", type=float, default=5.0, help="jobs created per second")
    parser.add_argument("--fail-every", type=int, default=10, help="fail a pod of every k-th job's first generation (0: none)")
    parser.add_argument("--hold", type=float, default=1.0, help="seconds a generation runs before the harness ends it")
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds per N until every job settles")
    parser.add_argument("--profile", action="store_true", help="run the operator under cProfile (operator-N.prof here)")
    args = parser.parse_args()
    reports = []
    for n in args.jobs:
        reports.append(one_cluster(n, args))
        print(json.dumps(reports[-1]), flush=True)
    print("| " + " | ".join(title for _, title in COLUMNS) + " |")
    print("|" + "---:|" * len(COLUMNS))
    for r in reports:
        print("| " + " | ".join(str(r[key]) for key, _ in COLUMNS) + " |")


if __name__ == "__main__":
    main()
