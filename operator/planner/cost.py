"""Closed-form step time and memory of one candidate plan.

A step is a 1F1B pipeline per data-parallel index d, then the gradient all-reduce, then
the optimizer. For each d, with m_d micro-batches and per-micro-batch stage times t_p
(compute at the slowest GPU of the stage's tensor x sequence group, plus that group's
collectives)::

    T_d  = sum_p t_p + 2 * sum_p c_p + (m_d - 1) * max(max_p t_p, NIC time per micro-batch)
    step = max_d T_d + max_ring allreduce + optimizer

where c_p is the point-to-point send between stages p and p+1, and a ring all-reduce of
B bytes over n ranks takes 2 (n-1)/n * B / bandwidth (the ring's slowest hop, divided by
the flows sharing that node's NIC). Memory per GPU follows Korthikanti et al.: bf16
weights and gradients, fp32 Adam state sharded over the gradient group, 34 * S*b*h bytes
of activations per layer and micro-batch (2 * S*b*h with recomputation), held for up to
``pipeline - p`` micro-batches on stage p.

The stage split and the data-parallel shares are chosen here, where their cost is known:
layers go one at a time to the stage whose time grows least (within its memory), and
micro-batches to the data index that finishes earliest (Zorse).
"""

from __future__ import annotations

import dataclasses
import functools
import heapq
import itertools
import math
import operator

from .dims import ParallelDims
from .layout import Slot
from .network import Link, NetworkSettings
from .network import link as _link
from .workload import BF16, Workload

GIB = 2**30


@dataclasses.dataclass(frozen=True)
class CostSettings:
    """Memory-model constants; each is a byte count or a ratio."""

    #: Fraction of a GPU's memory a plan may fill (allocator fragmentation, NCCL buffers).
    usable_memory_fraction: float = 0.92
    #: Fixed bytes per GPU for the CUDA context, kernels and communicator buffers.
    overhead_bytes: int = 2 * GIB
    #: fp32 master weights + Adam moments, bytes per parameter.
    optimizer_bytes_per_param: int = 12
    #: Shard the optimizer state over the gradient group (ZeRO-1 / FSDP's default).
    shard_optimizer: bool = True
    #: Activation bytes per token per hidden unit per layer without / with recomputation.
    activation_factor: float = 34.0
    recompute_activation_factor: float = 2.0


@dataclasses.dataclass(frozen=True)
class Paths:
    """Compute rates and link costs of one arrangement; group (p, d) is stage p, data index d."""

    #: [p][d] slowest member's sustained FLOP/s in the (p, d) tensor x sequence group.
    rate: list[list[float]]
    #: [p][d] slowest link inside that group (tensor and sequence collectives).
    inner: list[list[Link]]
    #: [p][d] seconds per byte of one boundary send p -> p+1, NIC sharing included.
    p2p: list[list[float]]
    #: [p][d] seconds per byte of chunk for the group's own sends over p -> p+1 (its
    #: members queue behind each other on their node's NIC; nobody else counted).
    p2p_own: list[list[float]]
    #: [p][d] seconds per byte of chunk the busier NIC of boundary p -> p+1 needs per
    #: micro-batch: every flow through it sends one chunk each way per micro-batch.
    nic_load: list[list[float]]
    #: [p] (seconds per byte, latency, members) of stage p's slowest gradient ring.
    rings: list[tuple[float, float, int]]
    #: [p][d] kind of group (p, d): groups of one kind (equal rate and inner link) take
    #: the same time per layer; at scale most groups are alike.
    kind: list[list[int]]
    #: (p, d) of the first group of each kind.
    kinds: list[tuple[int, int]]
    #: [d] column of data index d: data indices alike in every stage's kind and boundary
    #: costs run the same pipeline, so the step time computes one per column.
    column: list[int]
    #: First data index of each column.
    columns: list[int]


@dataclasses.dataclass
class Topology:
    """Per-(dims, rank order) facts the step time needs, computed once per arrangement:
    each stage's memory at once, the link facts (:attr:`paths`) on first use, since a
    candidate that does not fit in memory never needs them."""

    dims: ParallelDims
    slots: list[Slot]
    #: [p] (memory bytes, GPU name) of the stage's smallest GPU.
    memory: list[tuple[int, str]]
    #: [p] slowest HBM bandwidth, bytes/s.
    hbm: list[float]
    net: NetworkSettings
    #: Node-pair links, shared by the topologies of one search.
    links: dict = dataclasses.field(default_factory=dict, repr=False)

    @functools.cached_property
    def paths(self) -> Paths:
        return _paths(self)


@dataclasses.dataclass(frozen=True)
class Estimate:
    dims: ParallelDims
    micro_batch: int
    recompute: bool
    step_seconds: float
    memory_per_gpu_bytes: int
    stage_layers: tuple[int, ...]
    #: Samples per data-parallel index, summing to the global batch.
    samples: tuple[int, ...]
    #: When infeasible: (bytes needed, bytes available, GPU name) of the tightest stage.
    shortfall: tuple[int, int, str] | None = None

    @property
    def feasible(self) -> bool:
        return self.shortfall is None


def topology(slots: list[Slot], dims: ParallelDims, net: NetworkSettings, links: dict | None = None) -> Topology:
    """``links`` caches node-pair links across calls with the same ``net`` (one search)."""
    stage = len(slots) // dims.pipeline
    memory, hbm = [], []
    for p in range(dims.pipeline):
        present = list({s.node.name: s.node for s in slots[p * stage:(p + 1) * stage]}.values())  # rank order: ties go to the first
        smallest = min(present, key=lambda n: n.gpu_memory_bytes)
        memory.append((smallest.gpu_memory_bytes, smallest.gpu.name))
        hbm.append(min(n.gpu.hbm_gbps for n in present) * 1e9)
    return Topology(dims, slots, memory, hbm, net, {} if links is None else links)


def _paths(topo: Topology) -> Paths:
    """Consecutive ranks mostly share a node, so the loops go per run of ranks on one node,
    or per distinct node pair, rather than per rank: this runs ~70 times per search at
    1,024 GPUs."""
    dims, net, links = topo.dims, topo.net, topo.links
    dp, pp, sp, tp = dims.data, dims.pipeline, dims.sequence, dims.tensor
    k = sp * tp  # ranks per group: group g = p * dp + d holds ranks g * k .. (g + 1) * k - 1
    ident: dict[str, int] = {}
    nid = [ident.setdefault(s.node.name, len(ident)) for s in topo.slots]
    nodes = list({s.node.name: s.node for s in topo.slots}.values())  # id -> node
    run = list(itertools.accumulate((a != b for a, b in zip(nid, nid[1:])), initial=0))  # each rank's run of ranks on one node
    pair: dict[tuple[int, int], Link] = {}

    def link(a: int, b: int) -> Link:  # why: the same node pairs recur thousands of times at scale
        found = pair.get((a, b))
        if found is None:
            key = (nodes[a].name, nodes[b].name)
            found = links.get(key)
            if found is None:
                found = links[key] = _link(nodes[a], nodes[b], net)
            pair[(a, b)] = found
        return found

    groups = pp * dp
    speed = [n.gpu.tflops * 1e12 for n in nodes]
    rate = [speed[a] for a in nid[::k]]
    inner = [Link(math.inf, 0.0, False)] * groups
    for g in range(groups if k > 1 else 0):
        first = g * k
        if run[first] == run[first + k - 1]:
            inner[g] = link(nid[first], nid[first])
        else:
            members = nid[first:first + k]
            rate[g] = min(speed[a] for a in members)
            inner[g] = min((link(a, b) for a, b in zip(members, members[1:] + members[:1])), key=lambda l: l.bandwidth)

    # Point-to-point: every (s, t) rank of stage p sends to the same (s, t) of stage p+1
    # (activations) and back (gradients). Each NIC direction is busy for the sum over its
    # flows of bytes / that flow's link bandwidth, per micro-batch. ``pairs`` holds runs
    # of consecutive rank pairs between the same two nodes: (group, a, b, count, link).
    pairs: list[list] = []
    for g in range(groups - dp):
        a0, b0 = g * k, (g + dp) * k
        if run[a0] == run[a0 + k - 1] and run[b0] == run[b0 + k - 1]:
            pairs.append([g, nid[a0], nid[b0], k, link(nid[a0], nid[b0])])
            continue
        for i in range(k):
            a, b = nid[a0 + i], nid[b0 + i]
            if i and pairs[-1][1] == a and pairs[-1][2] == b:
                pairs[-1][3] += 1
            else:
                pairs.append([g, a, b, 1, link(a, b)])
    out_busy, in_busy = [0.0] * len(nodes), [0.0] * len(nodes)
    for _, a, b, count, l in pairs:
        if l.crosses_nodes:
            per_byte = 1 / l.bandwidth
            for _ in range(count):  # why: one addition per rank pair, as before runs were merged
                out_busy[a] += per_byte
                in_busy[b] += per_byte
                out_busy[b] += per_byte
                in_busy[a] += per_byte
    p2p, p2p_own, nic_load = [0.0] * groups, [0.0] * groups, [0.0] * groups
    own: dict[tuple[int, int], float] = {}
    for g, a, b, count, l in pairs:
        if not l.crosses_nodes:
            p2p[g] = max(p2p[g], 1 / l.bandwidth)
            continue
        shared = max(out_busy[a], in_busy[b], out_busy[b], in_busy[a])
        p2p[g] = max(p2p[g], shared)
        nic_load[g] = max(nic_load[g], shared)
        total = own.get((g, a), 0.0)
        for _ in range(count):
            total += 1 / l.bandwidth
        own[(g, a)] = total
    for (g, _), seconds in own.items():
        p2p_own[g] = max(p2p_own[g], seconds)
    for g, a, b, _, _ in pairs:
        if a == b:
            p2p_own[g] = max(p2p_own[g], p2p[g])

    # Gradient rings: ranks equal in (p, t), in rank order; NIC shared by concurrent rings.
    stage = dp * k
    ring_nodes = [nid[p * stage + t:(p + 1) * stage:tp] for p in range(pp) for t in range(tp)]
    out_flows = [0] * len(nodes)
    for members in ring_nodes:
        for x, y in zip(members, members[1:] + members[:1]):
            if x != y:
                out_flows[x] += 1
    rings: list[tuple[float, float, int]] = [(0.0, 0.0, dp * sp)] * pp
    slowest: dict[tuple[int, ...], tuple[float, float]] = {}  # rings over the same nodes (other t) cost the same
    for i, members in enumerate(ring_nodes):
        key = tuple(members)
        if key not in slowest:
            per_byte, latency = 0.0, 0.0
            for x, y in set(zip(members, members[1:] + members[:1])):  # why: max does not depend on the order
                l = link(x, y)
                flows = max(out_flows[x] or 1, out_flows[y] or 1) if l.crosses_nodes else 1
                per_byte, latency = max(per_byte, flows / l.bandwidth), max(latency, l.latency)
            slowest[key] = (per_byte, latency)
        per_byte, latency = slowest[key]
        if per_byte > rings[i // tp][0]:
            rings[i // tp] = (per_byte, latency, len(members))

    kind, firsts = _classes((rate[g], inner[g].bandwidth, inner[g].latency) for g in range(groups))
    column, columns = _classes(zip(*(x[p * dp:(p + 1) * dp] for x in (kind, p2p, p2p_own, nic_load) for p in range(pp))))
    kinds = [divmod(g, dp) for g in firsts]
    rows = lambda flat: [flat[p * dp:(p + 1) * dp] for p in range(pp)]  # noqa: E731
    return Paths(rows(rate), rows(inner), rows(p2p), rows(p2p_own), rows(nic_load), rings, rows(kind), kinds, column, columns)


def _classes(keys) -> tuple[list[int], list[int]]:
    """Class of each key (classes numbered in order of first appearance) and the position
    of each class's first key."""
    index: dict = {}
    of, first = [], []
    for i, key in enumerate(keys):
        c = index.setdefault(key, len(index))
        if c == len(first):
            first.append(i)
        of.append(c)
    return of, first


def allreduce_seconds(nbytes: float, members: int, per_byte: float, latency: float) -> float:
    if members == 1:
        return 0.0
    return 2 * (members - 1) / members * nbytes * per_byte + 2 * (members - 1) * latency


def layer_seconds(w: Workload, topo: Topology, p: int, d: int, micro_batch: int, recompute: bool) -> float:
    """One layer of one micro-batch on group (p, d): compute plus tensor and sequence traffic."""
    dims = topo.dims
    gpus = dims.tensor * dims.sequence
    seconds = w.layer_flops(micro_batch, recompute) / gpus / topo.paths.rate[p][d]
    l = topo.paths.inner[p][d]
    if dims.tensor > 1:
        chunk = w.activation_bytes(micro_batch) / dims.sequence
        seconds += w.tensor_allreduces(recompute) * allreduce_seconds(chunk, dims.tensor, 1 / l.bandwidth, l.latency)
    if dims.sequence > 1:
        seconds += w.sequence_bytes_per_layer(micro_batch, dims.sequence) / dims.tensor / l.bandwidth + 3 * (dims.sequence - 1) * l.latency
    return seconds


def memory_bytes(w: Workload, dims: ParallelDims, s: CostSettings, p: int, layers: int, micro_batch: int, recompute: bool, in_flight: int) -> int:
    """Peak bytes on a GPU of stage p holding ``layers`` layers."""
    first, last = p == 0, p == dims.pipeline - 1
    params = w.stage_params(layers, first, last) / dims.tensor
    shard = dims.data * dims.sequence if s.shard_optimizer else 1
    static = params * (2 * BF16 + s.optimizer_bytes_per_param / shard)
    per_layer = micro_batch * w.seq_len * w.dim / (dims.tensor * dims.sequence)
    factor = s.recompute_activation_factor if recompute else s.activation_factor
    activations = in_flight * layers * factor * per_layer
    if recompute:
        activations += s.activation_factor * per_layer  # the one layer being recomputed
    logits = 2 * 4 * micro_batch * w.seq_len * w.vocab / (dims.tensor * dims.sequence) if last else 0
    return int(static + activations + logits + s.overhead_bytes)


def estimate(w: Workload, topo: Topology, micro_batch: int, recompute: bool, s: CostSettings = CostSettings(), *, balance: bool = True) -> Estimate:
    """Step time and memory of one candidate; ``balance=False`` splits layers and samples
    evenly, as a planner that assumes identical GPUs would (the naive baseline)."""
    dims = topo.dims
    dp, pp = dims.data, dims.pipeline
    micro_batches = math.ceil(w.global_batch / micro_batch)

    # Stage split: memory caps first (Pipette), then greedy on the harmonic-mean layer time.
    in_flight = [min(pp - p, max(1, math.ceil(micro_batches / dp))) for p in range(pp)]
    caps, shortfall = [], None
    for p in range(pp):
        budget = topo.memory[p][0] * s.usable_memory_fraction
        base = memory_bytes(w, dims, s, p, 0, micro_batch, recompute, in_flight[p])
        slope = memory_bytes(w, dims, s, p, 1, micro_batch, recompute, in_flight[p]) - base
        caps.append(int((budget - base) // slope) if budget > base else 0)
    if sum(caps) < w.layers or min(caps) < 1:
        # Report the stage that overflows most under an even split.
        even = [w.layers // pp + (p < w.layers % pp) for p in range(pp)]
        need = [(memory_bytes(w, dims, s, p, even[p], micro_batch, recompute, in_flight[p]), p) for p in range(pp)]
        worst = max(need, key=lambda item: item[0] / topo.memory[item[1]][0])
        shortfall = (worst[0], topo.memory[worst[1]][0], topo.memory[worst[1]][1])
        return Estimate(dims, micro_batch, recompute, math.inf, worst[0], tuple(even), (), shortfall)
    if not balance:
        layers = [w.layers // pp + (p < w.layers % pp) for p in range(pp)]
        if any(n > cap for n, cap in zip(layers, caps)):
            need = max(memory_bytes(w, dims, s, p, layers[p], micro_batch, recompute, in_flight[p]) for p in range(pp))
            return Estimate(dims, micro_batch, recompute, math.inf, need, tuple(layers), (), (need, topo.memory[0][0], topo.memory[0][1]))

    # Groups of one kind cost the same per layer (Paths.kind); at scale most groups are alike.
    paths = topo.paths
    per_kind = [layer_seconds(w, topo, p, d, micro_batch, recompute) for p, d in paths.kinds]
    per_layer = [[per_kind[c] for c in row] for row in paths.kind]
    head = [w.head_flops(micro_batch) / (dims.tensor * dims.sequence) / paths.rate[pp - 1][d] for d in range(dp)]
    if balance:
        layers = _split_layers(w, pp, caps, per_layer, head, dp)

    # Per column of alike data indices (Paths.column): fill (first micro-batch through all
    # stages), steady interval, and how much earlier each stage drains.
    fills, intervals, drains = [], [], []
    backward = 3 / 4 if recompute else 2 / 3
    activation = w.activation_bytes(micro_batch) / (dims.tensor * dims.sequence)
    for d in paths.columns:
        stage = [layers[p] * per_layer[p][d] + (head[d] if p == pp - 1 else 0.0) for p in range(pp)]
        sends = [activation * paths.p2p[p][d] for p in range(pp - 1)] + [0.0]
        nic = max((activation * paths.nic_load[p][d] for p in range(pp)), default=0.0)
        fills.append(sum(stage) + 2 * sum(sends))
        # 1F1B: stage p's backward of micro-batch j waits for the round trip through p+1,
        # so the boundary's own sends sit partly inside the cycle (one send: measured
        # against the simulator, between the fully hidden and the fully exposed case).
        trips = [max(stage[p], stage[p + 1]) + activation * paths.p2p_own[p][d] for p in range(pp - 1)]
        intervals.append(max(max(stage), nic, *trips))
        # Stage p's last backward ends before those of stages 0..p-1 (and their sends).
        ahead, total = [], 0.0
        for p in range(pp):
            ahead.append(total)
            total += backward * stage[p] + sends[p]
        drains.append(ahead)
    fill, interval = [fills[c] for c in paths.column], [intervals[c] for c in paths.column]
    counts = balanced_counts(micro_batches, fill, interval) if balance else even_counts(micro_batches, dp)
    if counts is None:
        return Estimate(dims, micro_batch, recompute, math.inf, 0, tuple(layers), ())
    latest = [0.0] * len(paths.columns)  # latest finish in each column
    for f, i, m, c in zip(fill, interval, counts, paths.column):
        latest[c] = max(latest[c], f + (m - 1) * i)

    # Each stage's gradient ring starts when its last backward is done; then the optimizer.
    grads = [w.stage_params(layers[p], p == 0, p == pp - 1) / dims.tensor * BF16 for p in range(pp)]
    shard = dp * dims.sequence if s.shard_optimizer else 1
    step = 0.0
    for p in range(pp):
        ready = max(last - ahead[p] for last, ahead in zip(latest, drains))
        sync = allreduce_seconds(grads[p], *_ring(paths.rings[p]))
        optimizer = (grads[p] / BF16) * (s.optimizer_bytes_per_param / shard + 2 * BF16) * 2 / topo.hbm[p]
        step = max(step, ready + sync + optimizer)
    peak = max(memory_bytes(w, dims, s, p, layers[p], micro_batch, recompute, in_flight[p]) for p in range(pp))
    samples = samples_of(counts, micro_batch, w.global_batch)
    return Estimate(dims, micro_batch, recompute, step, peak, tuple(layers), samples)


def _split_layers(w: Workload, pp: int, caps: list[int], per_layer: list[list[float]], head: list[float], dp: int) -> list[int]:
    """Layers one at a time to the stage whose (harmonic-mean) time grows least, within caps."""
    mean = [dp / sum(map(operator.truediv, itertools.repeat(1), per_layer[p])) for p in range(pp)]  # sum of 1/t, without a Python loop
    extra = [0.0] * pp
    extra[pp - 1] = dp / sum(map(operator.truediv, itertools.repeat(1), head))
    layers = [1] * pp
    heap = [((2 * mean[p] + extra[p]), p) for p in range(pp) if caps[p] > 1]
    heapq.heapify(heap)
    for _ in range(w.layers - pp):
        _, p = heapq.heappop(heap)
        layers[p] += 1
        if layers[p] < caps[p]:
            heapq.heappush(heap, ((layers[p] + 1) * mean[p] + extra[p], p))
    return layers


def even_counts(total: int, n: int) -> list[int] | None:
    return None if total < n else [total // n + (d < total % n) for d in range(n)]


def _ring(ring: tuple[float, float, int]) -> tuple[int, float, float]:
    per_byte, latency, members = ring
    return members, per_byte, latency


def balanced_counts(total: int, fill: list[float], interval: list[float]) -> list[int] | None:
    """Micro-batches per data index minimising the latest finish; at least one each."""
    n = len(fill)
    if total < n:
        return None
    weight = [1 / i for i in interval]
    scale = total / sum(weight)
    counts = [max(1, int(scale * w)) for w in weight]
    finish = lambda d, m: fill[d] + (m - 1) * interval[d]  # noqa: E731
    while sum(counts) > total:  # why: the floor of 1 can overshoot
        d = max((d for d in range(n) if counts[d] > 1), key=lambda d: finish(d, counts[d]))
        counts[d] -= 1
    heap = [(finish(d, counts[d] + 1), d) for d in range(n)]
    heapq.heapify(heap)
    for _ in range(total - sum(counts)):
        _, d = heapq.heappop(heap)
        counts[d] += 1
        heapq.heappush(heap, (finish(d, counts[d] + 1), d))
    return counts


def samples_of(counts: list[int], micro_batch: int, global_batch: int) -> tuple[int, ...]:
    """Samples per data index: whole micro-batches, the excess taken from the largest."""
    samples = [c * micro_batch for c in counts]
    excess = sum(samples) - global_batch
    while excess > 0:
        d = max(range(len(samples)), key=lambda i: (samples[i], -i))
        take = min(excess, samples[d] - 1)
        samples[d] -= take
        excess -= take
    return tuple(samples)
