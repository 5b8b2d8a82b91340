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
from collections import Counter

from shardwright.operator.api import TrainingJobSpec

from . import cost, layout
from .dims import ParallelDims
from .inventory import Inventory, local_inventory
from .layout import Infeasible
from .network import NetworkSettings
from .plan import Plan, RankPlacement, plan_uniform
from .simulate import simulate
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
    #: Every distinct node order is tried, with every split, when there are at most this
    #: many (clusters of up to 4 distinct nodes).
    node_orders: int = 24
    #: Candidates re-scored by the simulator: the closed form's best this many, and the
    #: best of this many leading splits (plus the naive plan).
    rescore: int = 8
    #: Simulator work allowed beyond the closed form's best candidate and the naive plan:
    #: forward/backward ops summed over the candidates (about 7 us each).
    rescore_ops: int = 60_000


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
    #: The simulator's step time, when the alternative was on the short list.
    simulated_step_seconds: float | None = None


@dataclasses.dataclass(frozen=True)
class SearchResult:
    plan: Plan
    alternatives: tuple[Alternative, ...]
    #: Candidates scored in closed form (degree split x micro-batch x recomputation x order).
    evaluated: int
    #: Candidates re-scored by the simulator (the naive plan included).
    simulated: int = 0


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
    """Best plan for ``spec`` on ``inventory``; raises :class:`Infeasible` naming the limit.

    The closed form (``cost.estimate``) scores every candidate and prunes; the simulator
    (``simulate.simulate``) re-scores a short list - the closed form's best candidates,
    the best of each leading split, and the naive plan (:func:`naive`) - and the plan is
    the simulator's best of that list.
    """
    w = Workload.from_spec(spec)
    slots = layout.place_pods(spec, inventory)
    splits = degree_splits(spec, w, slots, settings.search)
    if not splits:
        raise Infeasible(f"no tensor x sequence x pipeline x data split of {len(slots)} GPUs fits the model and batch")
    links: dict = {}
    arranged = layout.arranger(slots)
    scored: list[tuple[tuple, cost.Estimate, str, cost.Topology]] = []
    best_per_split: dict[ParallelDims, tuple] = {}
    for dims in splits:
        topo = cost.topology(arranged(dims, "speed"), dims, settings.network, links)
        for est in _estimates(w, topo, settings):
            entry = (_rank_key(est, "speed"), est, "speed", topo)
            scored.append(entry)
            if dims not in best_per_split or entry[0] < best_per_split[dims][0]:
                best_per_split[dims] = entry
    orders = [o for o in layout.ORDERS if o not in ("speed", "name")]  # why: speed was pass one; name is naive's
    every = layout.node_sequences(slots, settings.search.node_orders)
    # why: on a few nodes the order changes the ranking of splits (which stages share a
    # node), so pass one's ranking on one order is no guide: every split gets every order.
    leaders = sorted(best_per_split.values(), key=lambda e: e[0])[: len(splits) if every else settings.search.refine]
    orders += every
    for _, est, _, _ in leaders:
        if not est.feasible:
            continue
        for order in orders:
            topo = cost.topology(arranged(est.dims, order), est.dims, settings.network, links)
            for e in _estimates(w, topo, settings):
                entry = (_rank_key(e, order), e, order, topo)
                scored.append(entry)
                if entry[0] < best_per_split[est.dims][0]:
                    best_per_split[est.dims] = entry
    feasible = sorted((e for e in scored if e[1].feasible), key=lambda e: e[0])
    if not feasible:
        raise Infeasible(_limit_message(scored))
    evaluated = len(scored)

    # Short list for the simulator, in closed-form order, without duplicate arrangements.
    per_split = sorted((e for e in best_per_split.values() if e[1].feasible), key=lambda e: e[0])
    shortlist: list[tuple[tuple, cost.Estimate, str, cost.Topology]] = []
    seen = set()
    for entry in feasible[: settings.search.rescore] + per_split[: settings.search.rescore]:
        _, e, _, topo = entry
        key = (e.dims, e.micro_batch, e.recompute, tuple(x.node.name for x in topo.slots))
        if key not in seen:
            seen.add(key)
            shortlist.append(entry)
    shortlist.sort(key=lambda e: e[0])
    # Simulate in closed-form order; skip a candidate whose compute alone (a lower bound
    # on its simulated step) cannot beat the best so far, or past the simulation budget.
    simulated: list[tuple[float, int, Plan]] = []
    ops = 0
    for i, (_, e, order, topo) in enumerate(shortlist):
        if simulated and _compute_bound(e, topo, w) >= simulated[0][0]:
            continue
        if simulated and ops + _ops(e) > settings.search.rescore_ops:
            continue  # why: the closed-form best is always simulated; the rest within the budget
        ops += _ops(e)
        plan = to_plan(e, topo, w, order)
        simulated.append((simulate(plan, inventory, w, settings.network, settings.cost).step_seconds, i, plan))
        simulated.sort(key=lambda x: (x[0], x[1]))
    # The naive plan: built and simulated unless no even plan could beat the best so far.
    named = _name_topologies(spec, inventory, w, settings, links)
    naive_bound = _naive_bound(w, named, settings)
    baseline = _naive(w, named, settings) if naive_bound < simulated[0][0] else None
    if baseline is not None:
        simulated.append((simulate(baseline, inventory, w, settings.network, settings.cost).step_seconds, len(shortlist), baseline))
    seconds, _, plan = min(simulated, key=lambda x: (x[0], x[1]))
    note = f"Simulated step {seconds:.3f} s, the best of {len(simulated)} candidates re-scored by the simulator"
    note += " (the naive plan among them)." if baseline is not None else f" (no naive plan can be faster: its compute alone takes {naive_bound:.3f} s)."
    plan = dataclasses.replace(plan, simulated_step_seconds=seconds, explanation=f"{plan.explanation} {note}")
    sim = {(p.dims, p.micro_batch, p.recompute, p.order): t for t, _, p in simulated}
    chosen = (plan.dims, plan.micro_batch, plan.recompute, plan.order)
    alternatives = tuple(
        Alternative(e.dims, e.micro_batch, e.recompute, o, e.step_seconds, e.memory_per_gpu_bytes, sim.get((e.dims, e.micro_batch, e.recompute, o)))
        for _, e, o, _ in per_split if (e.dims, e.micro_batch, e.recompute, o) != chosen
    )[: settings.search.alternatives]
    return SearchResult(plan, alternatives, evaluated, len(simulated))


def naive(spec: TrainingJobSpec, inventory: Inventory, settings: Settings = Settings(), w: Workload | None = None, links: dict | None = None) -> Plan | None:
    """The obvious plan: what a planner that assumes identical GPUs would pick.

    Ranks in node-name order, even data-parallel shares and even stages; its degrees,
    micro-batch and recomputation the closed form's best under those constraints. The
    search simulates it beside its own candidates, so it never returns a plan the
    simulator rates slower. None when no even plan fits in memory.
    """
    w = w or Workload.from_spec(spec)
    return _naive(w, _name_topologies(spec, inventory, w, settings, links), settings)


def _name_topologies(spec: TrainingJobSpec, inventory: Inventory, w: Workload, settings: Settings, links: dict | None) -> list[cost.Topology]:
    """Every degree split on the naive plan's placement: pods and ranks in node-name order."""
    slots = layout.place_pods(spec, inventory, "name")
    arranged = layout.arranger(slots)
    return [cost.topology(arranged(dims, "name"), dims, settings.network, links) for dims in degree_splits(spec, w, slots, settings.search)]


def _naive(w: Workload, topologies: list[cost.Topology], settings: Settings) -> Plan | None:
    """:func:`naive` on the splits of :func:`_name_topologies`."""
    best = None
    for topo in topologies:
        for e in _estimates(w, topo, settings, balance=False):
            if e.feasible and (best is None or e.step_seconds < best[0].step_seconds):
                best = (e, topo)
    return None if best is None else to_plan(best[0], best[1], w, "name")


def _compute_bound(e: cost.Estimate, topo: cost.Topology, w: Workload) -> float:
    """Seconds the busiest (stage, data index) group computes: the simulator runs each
    group's ops one after another, each at least its FLOPs at the group's slowest GPU."""
    dims = e.dims
    inner = dims.tensor * dims.sequence
    worst = 0.0
    for p, layers in enumerate(e.stage_layers):
        for d, n in enumerate(e.samples):
            flops = w.layer_flops(n, e.recompute) * layers + (w.head_flops(n) if p == dims.pipeline - 1 else 0.0)
            worst = max(worst, flops / inner / topo.paths.rate[p][d])
    return worst


def _naive_bound(w: Workload, topologies: list[cost.Topology], settings: Settings) -> float:
    """Lower bound on the simulated step of any naive plan (name order, even stages and
    shares; :func:`naive`), without building one: for each split and micro-batch, each
    stage's compute for all its micro-batches, after micro-batch 0's forwards through the
    stages before it and before the last micro-batch's backwards through them (1F1B),
    every group at its slowest GPU; splits that do not fit in memory even with
    recomputation are left out. Communication only adds to it."""
    bound = float("inf")
    for topo in topologies:
        dims = topo.dims
        dp, pp, inner = dims.data, dims.pipeline, dims.tensor * dims.sequence
        layers = [w.layers // pp + (p < w.layers % pp) for p in range(pp)]
        memory = [m for m, _ in topo.memory]
        rate = None
        for mb in settings.search.micro_batches:
            counts = cost.even_counts(-(-w.global_batch // mb), dp)
            if counts is None:
                continue
            in_flight = [min(pp - p, max(1, -(-sum(counts) // dp))) for p in range(pp)]
            if any(cost.memory_bytes(w, dims, settings.cost, p, layers[p], mb, True, in_flight[p]) > memory[p] * settings.cost.usable_memory_fraction
                   for p in range(pp)):
                continue  # why: not even recomputation fits; the naive plan cannot be this one
            rate = rate or [[x * inner for x in row] for row in topo.paths.rate]
            worst = 0.0
            alike = set()  # why: data indices of one column (same rates) with the same samples give the same bound
            for d, n in enumerate(cost.samples_of(counts, mb, w.global_batch)):
                if (topo.paths.column[d], n) in alike:
                    continue
                alike.add((topo.paths.column[d], n))
                first, last = w.layer_flops(min(mb, n), False), w.layer_flops(n - (-(-n // mb) - 1) * mb, False)
                before = 0.0
                for p in range(pp):
                    work = (w.layer_flops(n, False) * layers[p] + (w.head_flops(n) if p == pp - 1 else 0.0)) / rate[p][d]
                    worst = max(worst, before + work)
                    before += (first / 3 + last * 2 / 3) * layers[p] / rate[p][d]
            bound = min(bound, worst)
    return bound


def _ops(e: cost.Estimate) -> int:
    """Forward and backward ops the simulator plays for ``e``'s plan (its running time scales with it)."""
    return 2 * e.dims.pipeline * sum(-(-n // e.micro_batch) for n in e.samples or (1,))


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
    node_gpus = max(Counter(x.node.name for x in slots).values())
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


def _estimates(w: Workload, topo: cost.Topology, settings: Settings, balance: bool = True):
    per_rank = w.global_batch / topo.dims.data
    for mb in settings.search.micro_batches:
        if mb > 1 and mb > per_rank:
            break  # why: a larger micro-batch than any rank's samples only adds padding
        for rc in settings.search.recompute:
            est = cost.estimate(w, topo, mb, rc, settings.cost, balance=balance)
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
    inner = dims.tensor * dims.sequence
    for rank, slot in enumerate(topo.slots):
        d = rank // inner % dims.data
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
             f"micro-batch {plan.micro_batch}{', recomputation on' if plan.recompute else ''}, {_order_text(plan.order)}."]
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


def _order_text(order: str) -> str:
    if order.startswith(layout.EXPLICIT):
        return "nodes in the order " + order[len(layout.EXPLICIT):].replace(",", ", ")
    if order == "name":
        return "nodes in name order with even shares and stages (the naive plan)"
    return f"nodes ordered by {order}"
