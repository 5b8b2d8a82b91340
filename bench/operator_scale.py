"""How the operator keeps up with many TrainingJobs, against KMock (no real API server here).

    .venv/bin/python bench/operator_scale.py --jobs 100 500

For each N: KMock runs in a child process with N tiny TrainingJobs already in it (as after
an operator upgrade); this process runs the operator alone, as ``shardwright operator``
does. The child times, on the shared monotonic clock, when every job has its 2 pods and a
status with generation 1. Reports wall time until all are ready, per-job percentiles, and
this (the operator's) process's peak RSS. Results: docs/benchmarks-operator.md.

Two KMock costs are kept out of the figure, in this harness only (never in product code):
KMock serves from its own event loop in its own process, and its request log is trimmed to
its most recent requests, because KMock 0.8 matches every request against its whole log
(an O(requests so far) cost per request: 100 jobs took 69.5 s that way).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import multiprocessing
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import kmock
import kopf

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.operator import mockapi  # noqa: E402  (the same KMock setup as the tests)

from shardwright.operator import handlers  # noqa: E402

#: Requests KMock keeps in its log: more than are ever in flight at once (KMock must still
#: find a request in its log while serving it).
KEEP_REQUESTS = 30


class TrimmedEmulator(kmock.KubernetesEmulator):
    """KMock with a bounded request log (the benchmark asserts nothing on requests)."""

    async def __call__(self, raw_request):
        try:
            return await super().__call__(raw_request)
        finally:
            if len(self._requests) > 2 * KEEP_REQUESTS:
                del self._requests[:-KEEP_REQUESTS]


def serve_kmock(n: int, tmp: str, conn, timeout_s: float) -> None:
    """Child process: KMock with N jobs; reports its kubeconfig, then the ready times."""
    logging.basicConfig(level=logging.CRITICAL)

    async def main() -> None:
        async with TrimmedEmulator() as k, kmock.Server(k):
            conn.send(str(mockapi.declare(k, Path(tmp))))
            for i in range(n):
                k.objects[mockapi.TJ, mockapi.NS, f"job-{i}"] = mockapi.tiny_job(f"job-{i}")
            began = await asyncio.to_thread(conn.recv)  # the operator's start, monotonic
            done: dict[str, float] = {}
            while len(done) < n and time.monotonic() - began < timeout_s:
                pods: dict[str, int] = {}
                objects = list(k.objects.items())
                for (res, _ns, _name), obj in objects:
                    if res.plural == "pods" and not obj.deleted:
                        job = obj.raw["metadata"]["labels"]["shardwright.io/job"]
                        pods[job] = pods.get(job, 0) + 1
                for (res, _ns, name), obj in objects:
                    if res.plural == "trainingjobs" and name not in done:
                        if (obj.raw.get("status") or {}).get("generation") == 1 and pods.get(name) == 2:
                            done[name] = time.monotonic() - began
                await asyncio.sleep(0.05)
            conn.send(done)
            await asyncio.to_thread(conn.recv)  # stay up until the operator has stopped

    asyncio.run(main())


async def run_operator(cfg: handlers.OperatorConfig, conn) -> float:
    stop, ready = asyncio.Event(), asyncio.Event()
    memo = handlers.make_memo(cfg, request_json=lambda url, payload=None, token=None: None)
    began = time.monotonic()
    conn.send(began)
    task = asyncio.create_task(kopf.operator(
        registry=handlers.REGISTRY, memo=memo, clusterwide=True, standalone=True,
        stop_flag=stop, ready_flag=ready,
    ))
    await ready.wait()
    started = time.monotonic() - began
    await asyncio.to_thread(conn.poll, None)  # the child's verdict is in
    stop.set()
    await asyncio.wait_for(task, 60)
    return started


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def one_round(n: int, timeout_s: float, threads: int) -> dict:
    parent, child = multiprocessing.Pipe()
    with tempfile.TemporaryDirectory() as tmp:
        proc = multiprocessing.get_context("spawn").Process(target=serve_kmock, args=(n, tmp, child, timeout_s))
        proc.start()
        os.environ["KUBECONFIG"] = parent.recv()
        cfg = handlers.OperatorConfig(
            kubernetes=mockapi.FAST.kubernetes, resync_seconds=5.0, retry_seconds=0.5,
            webhook_port=None, webhook_insecure=True, reconcile_threads=threads,
        )
        cpu_before = _cpu_s()
        started = asyncio.run(run_operator(cfg, parent))
        cpu = _cpu_s() - cpu_before
        done = parent.recv()
        parent.send("stop")
        proc.join(30)
    times = sorted(done.values())

    def pct(q: float) -> float:
        return times[min(len(times) - 1, int(q * len(times)))] if times else float("nan")

    return {
        "jobs": n, "ready": len(times), "start_s": started, "wall_s": times[-1] if len(times) == n else float("nan"),
        "p50_s": pct(0.50), "p95_s": pct(0.95), "p99_s": pct(0.99),
        "cpu_s": cpu, "rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def main() -> None:
    logging.basicConfig(level=logging.CRITICAL)  # KMock ignores generateName: every event is a 409
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, nargs="+", default=[100, 500])
    parser.add_argument("--threads", type=int, default=handlers.OperatorConfig.reconcile_threads, help="reconcile threads")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per round before giving up")
    args = parser.parse_args()
    print("| jobs | all ready (s) | p50 per job (s) | p95 per job (s) | p99 per job (s) | operator CPU (s) | operator peak RSS (MiB) |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for n in args.jobs:
        r = one_round(n, args.timeout, args.threads)
        print(f"| {r['jobs']} ({r['ready']} ready) | {r['wall_s']:.1f} | {r['p50_s']:.2f} | {r['p95_s']:.2f} | {r['p99_s']:.2f} "
              f"| {r['cpu_s']:.1f} | {r['rss_mib']:.0f} |", flush=True)


if __name__ == "__main__":
    main()
