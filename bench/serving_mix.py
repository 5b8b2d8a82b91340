"""The GPU mix against the cheapest single GPU type (Mélange's claim in miniature).

For Llama-3-8B in bf16 on the five GPU types of examples/nodes/inference.yaml, three traffic
mixes (Mélange's short-context, long-context and mixed settings, in shape) at request rates
from 0.5 to 64 a second and two TPOT targets: the cost per hour of the planner's mix
(``operator/planner/servingmix.py``) over that of the cheapest single GPU type that meets
the same SLO, both sized by the same capacity model (``servingperf.py``), and how long the
exact search took. The capacities are the roofline model's, not measured on GPUs (method:
docs/serving-mix.md).

    .venv/bin/python bench/serving_mix.py
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from shardwright.operator.planner import inventory_from_nodelist  # noqa: E402
from shardwright.operator.planner.poolmix import plan_pool  # noqa: E402
from shardwright.operator.api.servingpool import ServingPoolSpec  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
#: (input tokens, output tokens, share) per setting.
MIXES = {
    "short (chat)": [(64, 32, 0.3), (128, 64, 0.4), (256, 128, 0.3)],
    "long (documents)": [(2048, 256, 0.4), (4096, 256, 0.4), (7000, 500, 0.2)],
    "mixed": [(128, 64, 0.5), (512, 256, 0.3), (2048, 256, 0.15), (7000, 500, 0.05)],
}
RATES = (0.5, 2, 8, 32, 64)
TPOTS = (0.05, 0.1)


def spec(lengths, rate: float, tpot: float) -> ServingPoolSpec:
    return ServingPoolSpec.model_validate({
        "model": {"preset": "llama-8b"},
        "engine": {"dtype": "bfloat16", "maxModelLen": 8192, "kvBlocks": 512},
        "slo": {"tpotP99Seconds": tpot, "ttftP99Seconds": 2.0},
        "traffic": {"requestsPerSecond": rate, "lengths": [{"inputTokens": i, "outputTokens": o, "share": s} for i, o, s in lengths]},
    })


def main() -> int:
    inventory = inventory_from_nodelist(yaml.safe_load((ROOT / "examples" / "nodes" / "inference.yaml").read_text()))
    print("| traffic | TPOT target (s) | req/s | mix | cost/h | cheapest single type | cost/h | mix / single | search (s) |")
    print("|---|---:|---:|---|---:|---|---:|---:|---:|")
    ratios: dict[str, list[float]] = {}
    for name, lengths in MIXES.items():
        for tpot in TPOTS:
            for rate in RATES:
                began = time.perf_counter()
                p = plan_pool(spec(lengths, rate, tpot), inventory)
                took = time.perf_counter() - began
                single = p.cheapest_single
                if p.best is None or single is None:
                    print(f"| {name} | {tpot} | {rate} | none meets the SLO | | | | | {took:.2f} |")
                    continue
                mix = " + ".join(f"{n} {o.replica.label}" for o, n in p.best.counts)
                ratio = p.best.cost_per_hour / single[1].cost_per_hour
                ratios.setdefault(name, []).append(ratio)
                shape = " + ".join(f"{n} {o.replica.label}" for o, n in single[1].counts)
                print(f"| {name} | {tpot} | {rate} | {mix} | {p.best.cost_per_hour:.2f} | {shape} | "
                      f"{single[1].cost_per_hour:.2f} | {ratio:.2f} | {took:.2f} |")
    print()
    for name, values in ratios.items():
        print(f"{name}: mix / cheapest single type, median {statistics.median(values):.2f}, lowest {min(values):.2f}, over {len(values)} settings")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
