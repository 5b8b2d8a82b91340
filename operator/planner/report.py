"""Render a search result for people (table, ``--explain``) and for tools (JSON, YAML).

The mapping :func:`to_dict` gives is the JSON/YAML output of ``shardwright plan``; its keys
are camelCase like the CRDs': ``degrees``, ``groups``, ``ranks``, ``predictedStepSeconds``,
``memoryPerGpuBytes``, ``microBatch``, ``recompute``, ``stageLayers``, ``samples``,
``explanation``, ``alternatives``.
"""

from __future__ import annotations

from typing import Any

from .dims import ParallelDims
from .search import SearchResult

GIB = 2**30


def _degrees(d: ParallelDims) -> dict[str, int]:
    return {"data": d.data, "tensor": d.tensor, "pipeline": d.pipeline, "sequence": d.sequence}


def to_dict(result: SearchResult) -> dict[str, Any]:
    plan = result.plan
    return {
        "degrees": _degrees(plan.dims),
        "groups": plan.groups,
        "ranks": [
            {"rank": r.rank, "node": r.node, "gpu": r.gpu, "share": r.share, "group": r.group, "replica": r.replica, "localRank": r.local_rank}
            for r in plan.ranks
        ],
        "predictedStepSeconds": plan.predicted_step_seconds,
        "simulatedStepSeconds": plan.simulated_step_seconds,
        "memoryPerGpuBytes": plan.memory_per_gpu_bytes,
        "microBatch": plan.micro_batch,
        "recompute": plan.recompute,
        "stageLayers": list(plan.stage_layers),
        "samples": list(plan.samples),
        "nodeOrder": plan.order,
        "explanation": plan.explanation,
        "alternatives": [
            {
                "degrees": _degrees(a.dims), "microBatch": a.micro_batch, "recompute": a.recompute, "nodeOrder": a.order,
                "predictedStepSeconds": a.predicted_step_seconds, "memoryPerGpuBytes": a.memory_per_gpu_bytes,
            }
            for a in result.alternatives
        ],
        "evaluated": result.evaluated,
    }


def table(result: SearchResult, explain: bool = False) -> str:
    """Plan summary, ranks grouped by node, then the alternatives."""
    plan = result.plan
    d = plan.dims
    lines = [
        f"plan: data={d.data} tensor={d.tensor} pipeline={d.pipeline} sequence={d.sequence}  "
        f"micro-batch={plan.micro_batch}  recompute={'on' if plan.recompute else 'off'}",
        f"predicted step: {plan.predicted_step_seconds:.3f} s (closed form), "
        f"{plan.simulated_step_seconds or float('nan'):.3f} s (simulated)   peak memory: {plan.memory_per_gpu_bytes / GIB:.1f} GiB per GPU",
    ]
    if d.pipeline > 1:
        lines.append("stage layers: " + " ".join(str(n) for n in plan.stage_layers))
    lines += ["", f"{'NODE':<20} {'GPU':<12} {'RANKS':<24} SHARE"]
    by_node: dict[str, list] = {}
    for r in plan.ranks:
        by_node.setdefault(r.node or "-", []).append(r)
    for node, ranks in by_node.items():
        shares = sorted({r.share for r in ranks})
        share = f"{shares[0]:.2f}" if len(shares) == 1 else f"{shares[0]:.2f}-{shares[-1]:.2f}"
        lines.append(f"{node:<20} {ranks[0].gpu or '-':<12} {_ranges([r.rank for r in ranks]):<24} {share}")
    if result.alternatives:
        lines += ["", "alternatives:"]
        for a in result.alternatives:
            lines.append(
                f"  {a.dims.layout:<22} micro-batch={a.micro_batch} recompute={'on' if a.recompute else 'off'} "
                f"order={a.order:<10} {a.predicted_step_seconds:.3f} s  {a.memory_per_gpu_bytes / GIB:.1f} GiB"
            )
    if explain:
        lines += ["", plan.explanation]
    return "\n".join(lines)


def _ranges(ranks: list[int]) -> str:
    """``[0, 1, 2, 5]`` -> ``0-2,5``."""
    out, start = [], None
    for i, r in enumerate(ranks):
        if start is None:
            start = r
        if i + 1 == len(ranks) or ranks[i + 1] != r + 1:
            out.append(f"{start}-{r}" if r != start else str(r))
            start = None
    return ",".join(out)
