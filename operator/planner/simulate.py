"""Step-time simulator: every rank, every link, the schedule's dependencies.

Independent of the closed-form model in ``cost.py``: it shares only the per-layer facts of
``workload.py`` (FLOPs, bytes) and the link table of ``network.py``. It plays one training
step as events:

- each pipeline stage of each data index runs the 1F1B order (``pipeline - p - 1``
  warm-up forwards, then one forward, one backward, ...), each micro-batch at its real
  size (the last one may be partial), each rank at its own GPU's rate; a tensor x sequence
  group finishes an op when its slowest member does, plus its per-layer collectives;
- a forward needs the previous stage's activations and a backward the next stage's
  gradients: every (sequence, tensor) rank pair sends its part, and a send between nodes
  holds the sender's NIC egress and the receiver's NIC ingress for ``bytes / bandwidth``;
  sends are served first come, first served, so ranks sharing a NIC queue behind each other;
- each gradient group runs a ring all-reduce once its last member's backward is done:
  ``2 (n - 1)`` steps, each a send from every member to the next over the same queues;
- then each rank's optimizer step at its HBM bandwidth.

The step time is the last rank's finish. The closed form approximates the queues by
dividing bandwidth among the flows that share a NIC and the 1F1B schedule by fill plus
``(m - 1)`` intervals; tests hold the two within a stated tolerance.
"""

from __future__ import annotations

import dataclasses
import heapq
import itertools

from .cost import CostSettings
from .inventory import Inventory, Node
from .network import NetworkSettings, link
from .plan import Plan
from .workload import BF16, Workload


@dataclasses.dataclass(frozen=True)
class Simulation:
    step_seconds: float
    #: Seconds each rank spent computing (forward, backward, optimizer).
    busy_seconds: tuple[float, ...]
    #: When each rank finished its step.
    finish_seconds: tuple[float, ...]
    #: Bytes that crossed node boundaries.
    network_bytes: float


class _Links:
    """FIFO queues on each node's NIC (egress and ingress) and each GPU's local port."""

    def __init__(self, nodes: list[Node], net: NetworkSettings) -> None:
        self.nodes, self.net = nodes, net
        self.free: dict[tuple, float] = {}
        self.network_bytes = 0.0

    def route(self, pairs: list[tuple[int, int]]) -> list[tuple[tuple, int, float, float, bool]]:
        """Queue entries of a batch of sends issued together, ``pairs`` of (src, dst) ranks:
        (queue keys, messages, latency, seconds per byte, crosses nodes) per run of
        consecutive pairs between the same two nodes (one run per pair inside a node:
        each GPU has its own port)."""
        runs: list[list] = []
        for src, dst in pairs:
            a, b = self.nodes[src], self.nodes[dst]
            l = link(a, b, self.net)
            keys = (("out", a.name), ("in", b.name)) if l.crosses_nodes else (("port", src),)
            if runs and l.crosses_nodes and runs[-1][0] == keys:
                runs[-1][1] += 1
            else:
                runs.append([keys, 1, l.latency, 1 / l.bandwidth, l.crosses_nodes])
        return [tuple(r) for r in runs]

    def send_route(self, ready: float, route, nbytes: float) -> float:
        """Arrival of the last message of a batch (see :meth:`route`), each of ``nbytes``."""
        free = self.free
        arrival = ready
        for keys, count, latency, per_byte, crosses in route:
            start = ready
            for k in keys:
                start = max(start, free.get(k, 0.0))
            end = start + count * (latency + nbytes * per_byte)
            for k in keys:
                free[k] = end
            if crosses:
                self.network_bytes += count * nbytes
            arrival = max(arrival, end)
        return arrival


def simulate(plan: Plan, inventory: Inventory, w: Workload, net: NetworkSettings = NetworkSettings(), s: CostSettings = CostSettings()) -> Simulation:
    dims = plan.dims
    dp, pp, sp, tp = dims.data, dims.pipeline, dims.sequence, dims.tensor
    inner = sp * tp
    nodes = [inventory.node(r.node) for r in plan.ranks]
    rate = [n.gpu.tflops * 1e12 for n in nodes]
    links = _Links(nodes, net)
    layers = plan.stage_layers or (w.layers,)
    mb = plan.micro_batch or 1
    samples = plan.samples or tuple([w.global_batch // dp] * dp)
    sizes = [[min(mb, n - i) for i in range(0, n, mb)] for n in samples]
    group_flops = {(p, d): 0.0 for p in range(pp) for d in range(dp)}
    group_free = dict.fromkeys(group_flops, 0.0)

    def members(p: int, d: int) -> list[int]:
        first = dims.rank(pipeline=p, data=d)
        return list(range(first, first + inner))

    # Per group: its slowest member's rate and the slowest hops of its tensor and sequence
    # rings (each member's time is its own; the group's op ends with the slowest).
    slowest_rate = {key: min(rate[r] for r in members(*key)) for key in group_flops}
    hops = {key: _group_hops(members(*key), nodes, net, sp, tp) for key in group_flops}
    durations: dict[tuple, tuple[float, float]] = {}

    def op_time(p: int, d: int, size: int, backward: bool) -> tuple[float, float]:
        """(seconds, FLOPs) of forward/backward of one micro-batch of ``size`` on group (p, d)."""
        key = (p, d, size, backward)
        if key not in durations:
            full = w.layer_flops(size, plan.recompute) * layers[p]
            fraction = (3 / 4 if plan.recompute else 2 / 3) if backward else (1 / 4 if plan.recompute else 1 / 3)
            flops = full * fraction
            if p == pp - 1:
                flops += w.head_flops(size) * (2 / 3 if backward else 1 / 3)
            seconds = flops / inner / slowest_rate[(p, d)] + _collectives(p, d, size, backward)
            durations[key] = (seconds, flops)
        return durations[key]

    def _collectives(p: int, d: int, size: int, backward: bool) -> float:
        """Per-layer tensor all-reduces and sequence ring passes, over the group's own links."""
        tensor_hop, sequence_hop = hops[(p, d)]
        seconds = 0.0
        if tp > 1:
            count = w.tensor_allreduces(plan.recompute) - 2 if backward else 2
            chunk = w.activation_bytes(size) / sp / tp
            seconds += layers[p] * count * 2 * (tp - 1) * (chunk * tensor_hop[0] + tensor_hop[1])
        if sp > 1:
            share = 2 / 3 if backward else 1 / 3
            nbytes = w.sequence_bytes_per_layer(size, sp) / tp * share
            seconds += layers[p] * (nbytes * sequence_hop[0] + (sp - 1) * sequence_hop[1] * (2 if backward else 1))
        return seconds

    # 1F1B op order per stage: warm-up forwards, then alternate, then drain backwards.
    orders: dict[tuple[int, int], list[tuple[bool, int]]] = {}
    for p in range(pp):
        for d in range(dp):
            m = len(sizes[d])
            warm = min(pp - p - 1, m)
            seq = [(False, j) for j in range(warm)]
            f, b = warm, 0
            while b < m:
                if f < m:
                    seq.append((False, f))
                    f += 1
                seq.append((True, b))
                b += 1
            orders[(p, d)] = seq

    # Boundary sends of group (p, d) to (p +- 1, d): one per (sequence, tensor) rank pair.
    # Consecutive pairs between the same two nodes queue back to back on those NICs, so
    # they are one queue entry of k messages (the same times as k separate ones).
    routes = {}
    for p in range(pp):
        for target in (p - 1, p + 1):
            if 0 <= target < pp:
                for d in range(dp):
                    routes[(p, target, d)] = links.route(list(zip(members(p, d), members(target, d))))

    arrived: dict[tuple, float] = {}
    cursor = dict.fromkeys(orders, 0)
    done_at: dict[tuple, float] = {}
    events: list[tuple[float, int, tuple]] = []
    counter = itertools.count()

    def advance(p: int, d: int) -> None:
        """Start every op of group (p, d) whose inputs are known, in its order."""
        seq = orders[(p, d)]
        i = cursor[(p, d)]
        free = group_free[(p, d)]
        while i < len(seq):
            backward, j = seq[i]
            has_input = (p == pp - 1) if backward else (p == 0)
            ready = 0.0
            if not has_input:
                ready = arrived.get((p, d, j, backward))
                if ready is None:
                    break
            seconds, flops = op_time(p, d, sizes[d][j], backward)
            free = max(ready, free) + seconds
            group_flops[(p, d)] += flops
            i += 1
            heapq.heappush(events, (free, next(counter), (p, d, j, backward)))
        cursor[(p, d)] = i
        group_free[(p, d)] = free

    for key in orders:
        advance(*key)
    activation = {d: [w.activation_bytes(size) / inner for size in sizes[d]] for d in range(dp)}
    # Events are op ends, in time order, so every NIC queue is served first come first served.
    while events:
        t, _, (p, d, j, backward) = heapq.heappop(events)
        done_at[(p, d)] = t
        target = p - 1 if backward else p + 1
        if 0 <= target < pp:
            arrived[(target, d, j, backward)] = links.send_route(t, routes[(p, target, d)], activation[d][j])
            advance(target, d)

    finish = [0.0] * dims.world_size
    busy = [0.0] * dims.world_size
    for (p, d), t in done_at.items():
        for r in members(p, d):
            finish[r] = t
            busy[r] = group_flops[(p, d)] / inner / rate[r]
    _allreduce(plan, w, links, finish, layers)
    for r in range(dims.world_size):
        p = dims.coords(r)["pipeline"]
        params = w.stage_params(layers[p], p == 0, p == pp - 1) / tp
        shard = dp * sp if s.shard_optimizer else 1
        t = params * (s.optimizer_bytes_per_param / shard + 2 * BF16) * 2 / (nodes[r].gpu.hbm_gbps * 1e9)
        busy[r] += t
        finish[r] += t
    return Simulation(max(finish), tuple(busy), tuple(finish), links.network_bytes)


def _group_hops(ranks: list[int], nodes: list[Node], net: NetworkSettings, sp: int, tp: int) -> tuple[tuple[float, float], tuple[float, float]]:
    """(seconds per byte, latency) of the slowest hop of the group's tensor rings and of its sequence rings."""

    def slowest(ring: list[int]) -> tuple[float, float]:
        hops = [link(nodes[x], nodes[y], net) for x, y in zip(ring, ring[1:] + ring[:1])]
        return max(1 / h.bandwidth for h in hops), max(h.latency for h in hops)

    inner = sp * tp
    tensor = max(slowest(ranks[i:i + tp]) for i in range(0, inner, tp)) if tp > 1 else (0.0, 0.0)
    sequence = max(slowest(ranks[t::tp]) for t in range(tp)) if sp > 1 else (0.0, 0.0)
    return tensor, sequence


def _allreduce(plan: Plan, w: Workload, links: _Links, finish: list[float], layers: tuple[int, ...]) -> None:
    """Ring all-reduce of every gradient group, step by step, rings interleaved in time."""
    dims = plan.dims
    pp = dims.pipeline
    rings = [g for g in dims.gradient_groups() if len(g) > 1]
    routes = [links.route(list(zip(ring, ring[1:] + ring[:1]))) for ring in rings]
    events = []
    for i, ring in enumerate(rings):
        p = dims.coords(ring[0])["pipeline"]
        chunk = w.stage_params(layers[p], p == 0, p == pp - 1) / dims.tensor * BF16 / len(ring)
        heapq.heappush(events, (max(finish[r] for r in ring), i, 0, chunk))
    while events:
        t, i, step, chunk = heapq.heappop(events)
        ring = rings[i]
        end = links.send_route(t, routes[i], chunk)
        if step + 1 < 2 * (len(ring) - 1):
            heapq.heappush(events, (end, i, step + 1, chunk))
        else:
            for r in ring:
                finish[r] = end


