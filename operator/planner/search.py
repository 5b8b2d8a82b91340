"""The plan search: degrees, micro-batch, recomputation and rank order, scored in closed form.

Two passes keep it under a second at 1,024 GPUs. First every (tensor, sequence, pipeline,
data) split the model and the nodes allow, with every micro-batch size and with and
without recomputation, on the fastest-first node order; then the best few splits again on
every node order of ``layout.ORDERS``. Stage sizes and data-parallel shares are solved
inside each estimate (``cost.estimate``). Only memory-feasible candidates compete; when
none is, the error names the tightest GPU and what it would need.
"""

from __future__ import annotations

import dataclasses
import math

from shardwright.operator.api import TrainingJobSpec

from . import cost, layout
from .dims import ParallelDims
from .inventory import Inventory, local_inventory
from .layout import Infeasible
from .network import NetworkSettings
from .plan import Plan, RankPlacement, plan_uniform
from .workload import Workload


@dataclasses.dataclass(frozen=True)
class SearchSettings:
    """Bounds of the search space; each bound is a degree or a count."""

    #: Largest tensor degree (one NVLink domain is 8 GPUs on current servers).
    max_tensor: int = 8
    #: Largest sequence degree.
    max_sequence: int = 8
    #: Largest pipeline degree.
    max_pipeline: int = 16
    #: Micro-batch sizes tried, samples.
    micro_batches: tuple[int, ...] = (1, 2, 4, 8)
    #: Whether to try without and with activation recomputation.
    recompute: tuple[bool, ...] = (False, True)
    #: Degree splits re-tried on every node order in the second pass.
    refine: int = 6
    #: Alternatives reported beside the plan.
    alternatives: int = 4


#: What ``shardwright run`` can execute today: the worker runs data and sequence
#: parallelism only, so the embedded default plans data parallelism alone.
RUNNABLE = SearchSettings(max_tensor=1, max_sequence=1, max_pipeline=1, micro_batches=(1,), recompute=(False,))


@dataclasses.dataclass(frozen=True)
class Settings:
    """Everything the planner reads, grouped; built once at start-up."""

    search: SearchSettings = SearchSettings()
    network: NetworkSettings = NetworkSettings()
    cost: cost.CostSettings = cost.CostSettings()


@dataclasses.dataclass(frozen=True)
class Alternative:
    """A runner-up: the best plan found for another degree split."""

    dims: ParallelDims
    micro_batch: int
    recompute: bool
    order: str
    predicted_step_seconds: float
    memory_per_gpu_bytes: int


@dataclasses.dataclass(frozen=True)
class SearchResult:
    plan: Plan
    alternatives: tuple[Alternative, ...]
    #: Candidates scored (degree split x micro-batch x recomputation x order).
    evaluated: int


def plan_job(spec: TrainingJobSpec, inventory: Inventory | None = None, replicas: dict[str, int] | None = None) -> Plan:
    """The plan a generation runs: the planner's for ``parallelism.auto``, else uniform.

    With no inventory (the embedded default) auto plans over one node of CPU ranks and
    only what the worker can run (:data:`RUNNABLE`).
    """
    if not spec.parallelism.auto:
        return plan_uniform(spec, replicas)
    if replicas is not None:
        workers = [g.model_copy(update={"replicas": replicas.get(g.name, 0)}) for g in spec.workers]
        spec = spec.model_copy(update={"workers": [g for g in workers if g.replicas]})
    if inventory is None:
        runnable = dataclasses.replace(RUNNABLE, micro_batches=(spec.data.micro_batch,))
        return search(spec, local_inventory(spec.world_size), Settings(search=runnable)).plan
    return search(spec, inventory).plan


def search(spec: TrainingJobSpec, inventory: Inventory, settings: Settings = Settings()) -> SearchResult:
    """Best plan for ``spec`` on ``inventory``; raises :class:`Infeasible` naming the limit."""
    w = Workload.from_spec(spec)
    slots = layout.place_pods(spec, inventory)
    splits = degree_splits(spec, w, slots, settings.search)
    if not splits:
        raise Infeasible(f"no tensor x sequence x pipeline x data split of {len(slots)} GPUs fits the model and batch")
    scored: list[tuple[tuple, cost.Estimate, str, cost.Topology]] = []
    evaluated = 0
    best_per_split: dict[ParallelDims, tuple] = {}
    for dims in splits:
        topo = cost.topology(layout.arrange(slots, dims, "speed"), dims, settings.network)
        for est in _estimates(w, topo, settings):
            evaluated += 1
            entry = (_rank_key(est, "speed"), est, "speed", topo)
            scored.append(entry)
            if dims not in best_per_split or entry[0] < best_per_split[dims][0]:
                best_per_split[dims] = entry
    leaders = sorted(best_per_split.values(), key=lambda e: e[0])[: settings.search.refine]
    for _, est, _, _ in leaders:
        if not est.feasible:
            continue
        for order in layout.ORDERS:
            if order in ("speed", "name"):
                continue  # why: speed was pass one; name order is the naive baseline's
            topo = cost.topology(layout.arrange(slots, est.dims, order), est.dims, settings.network)
            for e in _estimates(w, topo, settings):
                evaluated += 1
                entry = (_rank_key(e, order), e, order, topo)
                scored.append(entry)
                if entry[0] < best_per_split[est.dims][0]:
                    best_per_split[est.dims] = entry
    feasible = sorted((e for e in best_per_split.values() if e[1].feasible), key=lambda e: e[0])
    if not feasible:
        raise Infeasible(_limit_message(scored))
    _, best, order, topo = feasible[0]
    alternatives = tuple(
        Alternative(e.dims, e.micro_batch, e.recompute, o, e.step_seconds, e.memory_per_gpu_bytes)
        for _, e, o, _ in feasible[1 : 1 + settings.search.alternatives]
    )
    return SearchResult(to_plan(best, topo, w, order), alternatives, evaluated)


def degree_splits(spec: TrainingJobSpec, w: Workload, slots: list[layout.Slot], s: SearchSettings) -> list[ParallelDims]:
    """Every split the model, the batch and the nodes allow (or the spec's own, when explicit)."""
    world = len(slots)
    par = spec.parallelism
    if not par.auto:
        sp = par.sequence.degree
        data = par.data if par.data is not None else world // (sp * par.tensor * par.pipeline)
        dims = ParallelDims(data=data, sequence=sp, tensor=par.tensor, pipeline=par.pipeline)
        if dims.world_size != world:
            raise Infeasible(f"degrees {dims.layout} make {dims.world_size} ranks; the workers have {world}")
        return [dims]
    node_gpus = max(sum(1 for x in slots if x.node.name == n) for n in {x.node.name for x in slots})
    powers = [1 << i for i in range(8)]
    splits = []
    for tp in powers:
        if tp > s.max_tensor or tp > node_gpus or w.heads % tp or w.kv_heads % tp:
            continue
        for sp in powers:
            if sp > s.max_sequence or tp * sp > node_gpus or w.seq_len % (2 * sp):
                continue
            for pp in range(1, min(s.max_pipeline, w.layers) + 1):
                if world % (tp * sp * pp):
                    continue
                dp = world // (tp * sp * pp)
                if dp <= w.global_batch:
                    splits.append(ParallelDims(data=dp, sequence=sp, tensor=tp, pipeline=pp))
    return splits


def _estimates(w: Workload, topo: cost.Topology, settings: Settings):
    per_rank = w.global_batch / topo.dims.data
    for mb in settings.search.micro_batches:
        if mb > 1 and mb > per_rank:
            break  # why: a larger micro-batch than any rank's samples only adds padding
        for rc in settings.search.recompute:
            est = cost.estimate(w, topo, mb, rc, settings.cost)
            yield est
            if est.feasible and not rc:
                break  # why: recomputation only adds FLOPs; it is worth trying only when memory is short


def _rank_key(est: cost.Estimate, order: str) -> tuple:
    """Faster first; then less memory; then a fixed order of the knobs, for determinism."""
    d = est.dims
    return (est.step_seconds, est.memory_per_gpu_bytes, d.pipeline, d.tensor, d.sequence, est.micro_batch, est.recompute, order)


def _limit_message(scored) -> str:
    tight = [e for _, e, _, _ in scored if e.shortfall is not None]
    if not tight:
        return "no candidate plan fits the batch (every data-parallel rank needs at least one micro-batch)"
    e = min(tight, key=lambda e: (e.shortfall[0] / e.shortfall[1], e.dims.tensor, e.dims.pipeline))
    need, have, gpu = e.shortfall
    d = e.dims
    return (
        f"needs {need / cost.GIB:.0f} GiB per GPU at tensor={d.tensor}, pipeline={d.pipeline}, sequence={d.sequence} "
        f"(micro-batch {e.micro_batch}{', recomputation on' if e.recompute else ''}); {gpu} has {have / cost.GIB:.0f}"
    )


def to_plan(est: cost.Estimate, topo: cost.Topology, w: Workload, order: str) -> Plan:
    dims = est.dims
    even = w.global_batch / dims.data
    ranks = []
    for rank, slot in enumerate(topo.slots):
        d = dims.coords(rank)["data"]
        share = round(est.samples[d] / even, 6)
        ranks.append(RankPlacement(rank, slot.group, slot.replica, slot.local_rank, slot.node.name, slot.node.gpu.name, share))
    plan = Plan(
        dims=dims, ranks=tuple(ranks), predicted_step_seconds=est.step_seconds,
        memory_per_gpu_bytes=est.memory_per_gpu_bytes, micro_batch=est.micro_batch,
        recompute=est.recompute, stage_layers=est.stage_layers, samples=est.samples, order=order,
    )
    return dataclasses.replace(plan, explanation=explain(plan, topo))


def explain(plan: Plan, topo: cost.Topology) -> str:
    """A few sentences: the split, where groups sit, who gets more work and why."""
    d = plan.dims
    lines = [f"{d.layout} (tensor={d.tensor}, sequence={d.sequence}, pipeline={d.pipeline}, data={d.data}), "
             f"micro-batch {plan.micro_batch}{', recomputation on' if plan.recompute else ''}, nodes ordered by {plan.order}."]
    inner = d.tensor * d.sequence
    if inner > 1:
        crossing = sum(len({topo.slots[r].node.name for r in g}) > 1 for g in d.groups("tensor") + d.groups("sequence"))
        lines.append(f"Tensor x sequence groups of {inner} GPUs: {'all inside one node' if not crossing else f'{crossing} cross nodes (no node has room)'}.")
    if d.pipeline > 1:
        stages = []
        for p, layers in enumerate(plan.stage_layers):
            types = sorted({plan.ranks[r].gpu for r in range(d.rank(pipeline=p), d.rank(pipeline=p) + d.data * inner)})
            stages.append(f"stage {p}: {layers} layers on {'+'.join(types)}")
        lines.append("Uneven stages by stage speed: " + "; ".join(stages) + ".")
    shares = plan.data_shares
    if shares is not None:
        by_gpu: dict[str, list[float]] = {}
        for r in plan.ranks:
            by_gpu.setdefault(r.gpu, []).append(r.share)
        parts = [f"{g} {sum(v) / len(v):.2f}x" for g, v in sorted(by_gpu.items(), key=lambda kv: -sum(kv[1]) / len(kv[1]))]
        lines.append("Data shares by GPU speed (1.0 = even): " + ", ".join(parts) + ".")
    if not math.isinf(plan.predicted_step_seconds or math.inf):
        lines.append(f"Predicted step {plan.predicted_step_seconds:.3f} s, peak memory {plan.memory_per_gpu_bytes / cost.GIB:.1f} GiB per GPU.")
    return " ".join(lines)
