"""How the operator keeps up with many TrainingJobs, against KMock (no real API server here).

    .venv/bin/python bench/operator_scale.py --jobs 100 500

For each N: start KMock and the operator in one process (one event loop: the mock server
competes with the operator for the CPU, so these are upper bounds), put N tiny
TrainingJobs in it, start the operator, and time until every job has its 2 pods and a status with
generation 1. Reports wall time, the median and the 95th percentile per job, and the
operator process's peak RSS. Results: docs/benchmarks-operator.md.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import kmock
import kopf
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.operator import mockapi  # noqa: E402  (the same KMock setup as the tests)

from shardwright.operator import handlers  # noqa: E402


async def one_round(n: int) -> dict:
    async with kmock.KubernetesEmulator() as k, kmock.Server(k):
        with tempfile.TemporaryDirectory() as tmp:
            os.environ["KUBECONFIG"] = str(mockapi.declare(k, Path(tmp)))
            cfg = handlers.OperatorConfig(
                kubernetes=mockapi.FAST.kubernetes, resync_seconds=5.0, retry_seconds=0.5,
                webhook_port=None, webhook_insecure=True,
            )
            # The N jobs exist before the operator starts (as after an operator upgrade), so
            # creating them does not compete with the operator for this one event loop.
            for i in range(n):
                k.objects[mockapi.TJ, mockapi.NS, f"job-{i}"] = mockapi.tiny_job(f"job-{i}")
            stop, ready = asyncio.Event(), asyncio.Event()
            memo = handlers.make_memo(cfg, fetch_json=lambda url: None)
            began = time.monotonic()
            task = asyncio.create_task(kopf.operator(
                registry=handlers.REGISTRY, memo=memo, clusterwide=True, standalone=True,
                stop_flag=stop, ready_flag=ready,
            ))
            await ready.wait()
            created = time.monotonic() - began
            done: dict[str, float] = {}
            while len(done) < n:
                pods: dict[str, int] = {}
                objects = list(k.objects.items())
                for (res, _ns, name), obj in objects:
                    if res.plural == "pods" and not obj.deleted:
                        job = obj.raw["metadata"]["labels"]["shardwright.io/job"]
                        pods[job] = pods.get(job, 0) + 1
                for (res, _ns, name), obj in objects:
                    if res.plural == "trainingjobs" and name not in done:
                        if (obj.raw.get("status") or {}).get("generation") == 1 and pods.get(name) == 2:
                            done[name] = time.monotonic() - began
                await asyncio.sleep(0.2)
                if time.monotonic() - began > 600:
                    break
            wall = time.monotonic() - began
            stop.set()
            await asyncio.wait_for(task, 60)
    times = sorted(done.values())
    return {
        "jobs": n, "ready": len(times), "create_s": created, "wall_s": wall,
        "median_s": statistics.median(times), "p95_s": times[int(0.95 * (len(times) - 1))],
        "rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def main() -> None:
    import logging

    logging.basicConfig(level=logging.CRITICAL)  # KMock ignores generateName: every event is a 409
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, nargs="+", default=[100, 500])
    args = parser.parse_args()
    print("| jobs | all ready (s) | median per job (s) | p95 per job (s) | operator start (s) | peak RSS (MiB) |")
    print("|---:|---:|---:|---:|---:|---:|")
    for n in args.jobs:
        r = asyncio.run(one_round(n))
        print(f"| {r['jobs']} ({r['ready']} ready) | {r['wall_s']:.1f} | {r['median_s']:.1f} | {r['p95_s']:.1f} | {r['create_s']:.1f} | {r['rss_mib']:.0f} |", flush=True)


if __name__ == "__main__":
    main()
