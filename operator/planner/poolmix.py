"""A ServingPool's GPU mix: its spec and a cluster's nodes in, ``servingmix.plan`` out, and
the table and document ``shardwright plan POOL.yaml --nodes NODES.yaml`` prints."""

from __future__ import annotations

from typing import Any

from shardwright.operator.api.servingpool import RoleName, ServingPoolSpec

from .inventory import Inventory
from .servingmix import Available, Bucket, MixPlan, plan
from .servingperf import PerfSettings, ServedModel
from .workload import Workload

BYTES = {"float32": 4, "bfloat16": 2}


class NoTraffic(ValueError):
    """The pool says nothing the mix could be sized for."""


def plan_pool(spec: ServingPoolSpec, inventory: Inventory, s: PerfSettings = PerfSettings()) -> MixPlan:
    """The cheapest GPU mix for ``spec.traffic`` at ``spec.slo`` on ``inventory``'s GPUs
    (only ``roles[].gpuType``'s when the unified role names one)."""
    if spec.traffic is None:
        raise NoTraffic("spec.traffic: the GPU mix is sized for the expected traffic; set requestsPerSecond and lengths")
    if spec.slo.tpot_p99_seconds is None and spec.slo.ttft_p99_seconds is None:
        raise NoTraffic("spec.slo: the GPU mix is sized to meet a latency target; set tpotP99Seconds and/or ttftP99Seconds")
    model = ServedModel.of(Workload.of_model(spec.model.resolve()), BYTES[spec.engine.dtype])
    total = sum(b.share for b in spec.traffic.lengths)
    buckets = [Bucket(b.input_tokens, b.output_tokens, spec.traffic.requests_per_second * b.share / total) for b in spec.traffic.lengths]
    wanted = next((r.gpu_type for r in spec.roles if r.name is RoleName.UNIFIED and r.gpu_type), None)
    available: dict[str, Available] = {}
    for node in inventory.nodes:
        if wanted is not None and node.gpu.name != wanted and node.product != wanted:
            continue
        had = available.get(node.gpu.name)
        available[node.gpu.name] = Available(node.gpu, node.gpus + (had.gpus if had else 0), max(node.gpus, had.per_node if had else 0))
    if not available:
        raise ValueError(f"no node has a GPU{f' of type {wanted} (roles[].gpuType)' if wanted else ''}")
    return plan(model, list(available.values()), buckets, spec.slo.tpot_p99_seconds, spec.slo.ttft_p99_seconds, s)


def to_dict(p: MixPlan) -> dict[str, Any]:
    """The plan as a document (``-o json|yaml``)."""
    def mix(m) -> dict[str, Any] | None:
        if m is None:
            return None
        return {
            "costPerHour": round(m.cost_per_hour, 4), "replicas": m.replicas, "proven": m.proven,
            "shapes": [{"gpu": o.replica.gpu.name, "tensor": o.replica.tensor, "replicas": n,
                        "requestsPerSecond": {b.label: round(served, 4) for b, served in zip(p.buckets, row) if served > 1e-9}}
                       for (o, n), row in zip(m.counts, m.served)],
        }

    single = p.cheapest_single
    return {
        "buckets": [{"inputTokens": b.input_tokens, "outputTokens": b.output_tokens, "requestsPerSecond": round(b.rate, 4)} for b in p.buckets],
        "mix": mix(p.best),
        "singleType": {g.name: mix(m) for g, m in p.single},
        "cheapestSingleType": single[0].name if single else None,
        "costRatio": round(p.best.cost_per_hour / single[1].cost_per_hour, 4) if p.best and single else None,
        "capacity": [{"gpu": o.replica.gpu.name, "tensor": o.replica.tensor,
                      "requestsPerSecond": {b.label: round(c.requests_per_second, 3) if c else None for b, c in zip(p.buckets, o.capacities)}}
                     for o in p.options],
    }


def table(p: MixPlan) -> str:
    """The plan for a terminal: the mix, the single types it beats, each shape's capacity."""
    lines = ["Traffic: " + ", ".join(f"{b.rate:.3g} req/s of {b.label} tokens" for b in p.buckets)]
    if p.best is None:
        lines.append("No mix of this cluster's GPUs meets the SLO for every request size (see the capacities below).")
    else:
        note = "" if p.best.proven else " (the best found; the search stopped before proving it cheapest)"
        lines.append(f"GPU mix: {p.best.replicas} {'replica' if p.best.replicas == 1 else 'replicas'}, cost {p.best.cost_per_hour:.3g}/h (H100 = 1.0){note}")
        for (o, n), row in zip(p.best.counts, p.best.served):
            serves = ", ".join(f"{served:.3g} req/s of {b.label}" for b, served in zip(p.buckets, row) if served > 1e-9)
            lines.append(f"  {n} x {o.replica.label}: {serves}")
    lines.append("Single GPU type:")
    for g, m in p.single:
        shapes = " + ".join(f"{n} x {o.replica.label}" for o, n in m.counts) if m else ""
        lines.append(f"  {g.name}: " + (f"{shapes}, cost {m.cost_per_hour:.3g}/h" if m else "cannot serve every request size at the SLO"))
    if p.best is not None and (single := p.cheapest_single) is not None:
        lines.append(f"The mix costs {p.best.cost_per_hour / single[1].cost_per_hour:.2f}x the cheapest single type ({single[0].name}).")
    lines.append("Capacity per replica at the SLO (req/s):")
    width = max([len(o.replica.label) for o in p.options] + [5])
    lines.append("  " + "shape".ljust(width) + "".join(f"  {b.label:>11}" for b in p.buckets))
    for o in p.options:
        lines.append("  " + o.replica.label.ljust(width) + "".join(f"  {c.requests_per_second if c else 0:>11.3g}" if c else f"  {'-':>11}" for c in o.capacities))
    return "\n".join(lines)
