"""Planner benchmark: simulated step time of the planner's plan against exhaustive search
and naive placement on seeded random mixed clusters; planning time at 1,024 GPUs.

    .venv/bin/python bench/planner.py [--clusters 50] [--plot docs/benchmarks-planner.png] [--timing-only]

Job: a Llama-3.2-1B-shaped model, sequence 2048, global batch 128 (every cluster).
- planner: ``search`` (closed form prunes, the simulator re-scores a short list), its plan simulated;
- exhaustive (clusters <= 16 GPUs, <= 4 nodes): every distinct node order (nodes equal in
  type, GPU count, NIC and rack are interchangeable) x every degree split x micro-batch
  {1, 2, 4} x recomputation {off, on}, each scored by the *simulator*; stage split and
  shares balanced as the planner does;
- naive: ``search.naive`` - even shares and even stages, ranks in node-name order, degrees,
  micro-batch {1, 2, 4, 8} and recomputation chosen by the closed form under those
  constraints (a planner that assumes identical GPUs). The search itself simulates this
  plan among its candidates, so speedups below 1.0 cannot occur by construction.
Results are simulated step times (``planner/simulate.py``), not measurements on GPUs.
Planning time at 1,024 GPUs: wall and CPU seconds of ``search`` (inventory parsed before),
5 runs in one process; ``--timing-only`` runs just that.
"""

from __future__ import annotations

import argparse
import itertools
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from shardwright.operator.api import parse  # noqa: E402
from shardwright.operator.planner import cost, inventory_from_nodelist, layout, search  # noqa: E402
from shardwright.operator.planner.search import SearchSettings, degree_splits, to_plan  # noqa: E402
from shardwright.operator.planner.search import naive as planner_naive  # noqa: E402
from shardwright.operator.planner.network import NetworkSettings  # noqa: E402
from shardwright.operator.planner.simulate import simulate  # noqa: E402
from shardwright.operator.planner.workload import Workload  # noqa: E402

PRODUCTS = ["NVIDIA-H100-80GB-HBM3", "NVIDIA-A100-SXM4-80GB", "NVIDIA-A100-SXM4-40GB", "NVIDIA-L40S", "NVIDIA-A10G"]
NET = NetworkSettings()


def random_cluster(seed: int, small: bool) -> dict:
    rng = random.Random(seed)
    types = rng.sample(PRODUCTS, rng.randint(2, 4))
    target = rng.choice([8, 12, 16]) if small else rng.choice([24, 32, 48, 64])
    items, total, i = [], 0, 0
    while total < target or len({it["metadata"]["labels"]["nvidia.com/gpu.product"] for it in items}) < 2:
        product = types[i % len(types)] if i < len(types) else rng.choice(types)
        gpus = min(rng.choice([2, 4, 8] if small else [4, 8]), max(2, target - total)) if total < target else 2
        rdma = rng.random() < 0.5
        labels = {
            "nvidia.com/gpu.product": product, "shardwright.io/nic": "rdma" if rdma else "ethernet",
            "shardwright.io/nic-gbps": str(rng.choice([400, 800, 1600]) if rdma else rng.choice([25, 50, 100])),
            "shardwright.io/rack": f"rack-{rng.randint(0, 1)}", "topology.kubernetes.io/zone": "z",
        }
        items.append({"metadata": {"name": f"node-{rng.randrange(10**6):06d}", "labels": labels}, "status": {"allocatable": {"nvidia.com/gpu": str(gpus)}}})
        total += gpus
        i += 1
        if small and len(items) == 4:
            break
    return {"items": items}


def job(world: int, preset: str = "llama-1b", global_batch: int = 128, seq_len: int = 2048):
    return parse({
        "apiVersion": "shardwright.io/v1alpha1", "kind": "TrainingJob", "metadata": {"name": "bench"},
        "spec": {"model": {"preset": preset}, "data": {"seqLen": seq_len, "globalBatch": global_batch, "microBatch": 1},
                 "training": {"steps": 1}, "parallelism": {"auto": True}, "workers": [{"name": "w", "replicas": world}]},
    }).spec


def naive(spec, inv, w):
    return simulate(planner_naive(spec, inv), inv, w).step_seconds


def exhaustive(spec, inv, w):
    kinds = {}
    for n in inv.nodes:
        kinds.setdefault((n.gpu.name, n.gpus, n.nic, n.nic_gbps, n.block), []).append(n.name)
    names = [n.name for n in inv.nodes]
    seen, best, count = set(), float("inf"), 0
    for perm in itertools.permutations(names):
        key = tuple(next(k for k, v in kinds.items() if x in v) for x in perm)
        if key in seen:
            continue
        seen.add(key)
        rank = {name: i for i, name in enumerate(perm)}
        layout.ORDERS["_perm"] = lambda n: (rank[n.name],)
        slots = layout.place_pods(spec, inv, "_perm")
        for dims in degree_splits(spec, w, slots, SearchSettings()):
            topo = cost.topology(layout.arrange(slots, dims, "_perm"), dims, NET)
            for mb in (1, 2, 4):
                for rc in (False, True):
                    e = cost.estimate(w, topo, mb, rc)
                    if e.feasible:
                        count += 1
                        best = min(best, simulate(to_plan(e, topo, w, "_perm"), inv, w).step_seconds)
    del layout.ORDERS["_perm"]
    return best, count


def planning_time_1024() -> tuple[float, float, int, int]:
    rng = random.Random(1024)
    items = []
    for i in range(128):
        product = PRODUCTS[i % 4]
        rdma = i % 3 != 0
        items.append({"metadata": {"name": f"n{i:03d}", "labels": {
            "nvidia.com/gpu.product": product, "shardwright.io/nic": "rdma" if rdma else "ethernet",
            "shardwright.io/nic-gbps": "1600" if rdma else "100", "shardwright.io/rack": f"r{rng.randint(0, 7)}"}},
            "status": {"allocatable": {"nvidia.com/gpu": "8"}}})
    inv = inventory_from_nodelist({"items": items})
    spec = job(1024, preset="llama-70b", global_batch=1024, seq_len=4096)
    began, cpu = time.perf_counter(), time.process_time()
    result = search(spec, inv)
    return time.perf_counter() - began, time.process_time() - cpu, result.evaluated, result.simulated


def report_planning_time(runs: int = 5) -> None:
    times = [planning_time_1024() for _ in range(runs)]
    wall, cpu = [t[0] for t in times], [t[1] for t in times]
    _, _, evaluated, simulated = times[-1]
    print(f"planning time at 1,024 GPUs (llama-70b, 128 nodes, 4 types): median {statistics.median(wall):.2f} s, "
          f"min {min(wall):.2f} s, max {max(wall):.2f} s of {runs} runs (CPU median {statistics.median(cpu):.2f} s); "
          f"{evaluated} candidates in closed form, {simulated} simulated")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--clusters", type=int, default=50)
    ap.add_argument("--small", type=int, default=20, help="how many of them have <= 16 GPUs (exhaustive search)")
    ap.add_argument("--plot", type=Path)
    ap.add_argument("--timing-only", action="store_true", help="only the planning time at 1,024 GPUs")
    args = ap.parse_args()
    if args.timing_only:
        report_planning_time()
        return
    speedups, gaps = [], []
    print(f"{'seed':>4} {'gpus':>4} {'types':>5} {'planner s':>9} {'naive s':>8} {'speedup':>7} {'exhaustive s':>12} {'gap':>6} {'plan t':>6} plan")
    for seed in range(args.clusters):
        small = seed < args.small
        inv = inventory_from_nodelist(random_cluster(seed, small))
        spec = job(inv.gpus)
        w = Workload.from_spec(spec)
        began = time.perf_counter()
        plan = search(spec, inv).plan
        took = time.perf_counter() - began
        planned = simulate(plan, inv, w).step_seconds
        base = naive(spec, inv, w)
        speedups.append(base / planned)
        row = f"{seed:>4} {inv.gpus:>4} {len(inv.gpu_types):>5} {planned:>9.3f} {base:>8.3f} {base / planned:>7.2f}"
        if small:
            best, _ = exhaustive(spec, inv, w)
            gaps.append(planned / best - 1)
            row += f" {best:>12.3f} {100 * (planned / best - 1):>5.1f}%"
        else:
            row += f" {'-':>12} {'-':>6}"
        print(row, f"{took:>5.2f}s", plan.dims.layout, plan.order if not plan.order.startswith("nodes:") else "nodes:...", flush=True)
    print()
    q = statistics.quantiles(speedups, n=10)
    print(f"speedup over naive: median {statistics.median(speedups):.2f}x, p10 {q[0]:.2f}x, p90 {q[-1]:.2f}x, min {min(speedups):.2f}x, max {max(speedups):.2f}x (n={len(speedups)})")
    if gaps:
        print(f"gap to exhaustive: median {100 * statistics.median(gaps):.1f}%, max {100 * max(gaps):.1f}%, within 3%: {sum(g <= 0.03 for g in gaps)}/{len(gaps)}")
    report_planning_time()
    if args.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6.4, 3.6))
        ax.hist(speedups, bins=20, color="#4472c4", edgecolor="white")
        ax.axvline(statistics.median(speedups), color="black", linestyle="--", label=f"median {statistics.median(speedups):.2f}x")
        ax.axvline(1.3, color="#c00000", linestyle=":", label="target 1.3x")
        ax.set_xlabel("simulated step time: naive / planner (higher is better)")
        ax.set_ylabel("clusters")
        ax.set_title(f"Planner vs naive placement on {len(speedups)} random mixed clusters")
        ax.legend()
        fig.tight_layout()
        fig.savefig(args.plot, dpi=120)
        print(f"plot: {args.plot}")


if __name__ == "__main__":
    main()
