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

    def send(self, ready: float, src: int, dst: int, nbytes: float) -> float:
        """Arrival time of ``nbytes`` from rank ``src`` to ``dst``, queued at ``ready``."""
        a, b = self.nodes[src], self.nodes[dst]
        l = link(a, b, self.net)
        keys = [("out", a.name), ("in", b.name)] if l.crosses_nodes else [("port", src)]
        start = max([ready] + [self.free.get(k, 0.0) for k in keys])
        end = start + l.latency + nbytes / l.bandwidth
        for k in keys:
            self.free[k] = end
        if l.crosses_nodes:
            self.network_bytes += nbytes
        return end


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
    busy = [0.0] * dims.world_size
    group_free = {(p, d): 0.0 for p in range(pp) for d in range(dp)}

    def members(p: int, d: int) -> list[int]:
        first = dims.rank(pipeline=p, data=d)
        return list(range(first, first + inner))

    def run_op(p: int, d: int, j: int, backward: bool, ready: float) -> float:
        """Run forward/backward of micro-batch j on group (p, d); returns its end."""
        size = sizes[d][j]
        full = w.layer_flops(size, plan.recompute) * layers[p]
        fraction = (3 / 4 if plan.recompute else 2 / 3) if backward else (1 / 4 if plan.recompute else 1 / 3)
        flops = full * fraction
        if p == pp - 1:
            flops += w.head_flops(size) * (2 / 3 if backward else 1 / 3)
        start = max(ready, group_free[(p, d)])
        compute = 0.0
        for r in members(p, d):
            t = flops / inner / rate[r]
            busy[r] += t
            compute = max(compute, t)
        end = start + compute + _collectives(p, d, size, backward)
        group_free[(p, d)] = end
        return end

    def _collectives(p: int, d: int, size: int, backward: bool) -> float:
        """Per-layer tensor all-reduces and sequence ring passes, over the group's own links."""
        ranks = members(p, d)
        seconds = 0.0
        if tp > 1:
            count = w.tensor_allreduces(plan.recompute) - 2 if backward else 2
            chunk = w.activation_bytes(size) / sp / tp
            slowest = max(_slowest_hop(ranks[i:i + tp]) for i in range(0, inner, tp))
            seconds += layers[p] * count * 2 * (tp - 1) * (chunk * slowest[0] + slowest[1])
        if sp > 1:
            share = 2 / 3 if backward else 1 / 3
            per_byte, latency = max(_slowest_hop(ranks[t::tp]) for t in range(tp))
            nbytes = w.sequence_bytes_per_layer(size, sp) / tp * share
            seconds += layers[p] * (nbytes * per_byte + (sp - 1) * latency * (2 if backward else 1))
        return seconds

    def _slowest_hop(ring: list[int]) -> tuple[float, float]:
        """(seconds per byte, latency) of the ring's slowest hop; its ports are its own."""
        hops = [link(nodes[x], nodes[y], net) for x, y in zip(ring, ring[1:] + ring[:1])]
        return max(1 / h.bandwidth for h in hops), max(h.latency for h in hops)

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

    arrived: dict[tuple, float] = {}
    cursor = {key: 0 for key in orders}
    done_at: dict[tuple, float] = {}
    events: list[tuple[float, int, str, tuple]] = []
    counter = itertools.count()

    def advance(p: int, d: int) -> None:
        """Start every op of group (p, d) whose inputs are known, in its order."""
        seq = orders[(p, d)]
        while cursor[(p, d)] < len(seq):
            backward, j = seq[cursor[(p, d)]]
            need = (p, d, j, backward)
            has_input = (p == pp - 1) if backward else (p == 0)
            if not has_input and need not in arrived:
                return
            end = run_op(p, d, j, backward, arrived.get(need, 0.0))
            cursor[(p, d)] += 1
            heapq.heappush(events, (end, next(counter), "done", (p, d, j, backward)))

    for key in orders:
        advance(*key)
    activation = {d: [w.activation_bytes(size) / inner for size in sizes[d]] for d in range(dp)}
    while events:
        t, _, kind, (p, d, j, backward) = heapq.heappop(events)
        if kind == "done":
            done_at[(p, d)] = t
            target = p - 1 if backward else p + 1
            if 0 <= target < pp:
                heapq.heappush(events, (t, next(counter), "send", (p, d, j, backward)))
        elif kind == "send":
            target = p - 1 if backward else p + 1
            arrival = max(
                links.send(t, src, dst, activation[d][j])
                for src, dst in zip(members(p, d), members(target, d))
            )
            heapq.heappush(events, (arrival, next(counter), "arrive", (target, d, j, backward)))
        else:
            arrived[(p, d, j, backward)] = t
            advance(p, d)

    finish = [0.0] * dims.world_size
    for (p, d), t in done_at.items():
        for r in members(p, d):
            finish[r] = t
    _allreduce(plan, w, links, finish, layers)
    for r in range(dims.world_size):
        p = dims.coords(r)["pipeline"]
        params = w.stage_params(layers[p], p == 0, p == pp - 1) / tp
        shard = dp * sp if s.shard_optimizer else 1
        t = params * (s.optimizer_bytes_per_param / shard + 2 * BF16) * 2 / (nodes[r].gpu.hbm_gbps * 1e9)
        busy[r] += t
        finish[r] += t
    return Simulation(max(finish), tuple(busy), tuple(finish), links.network_bytes)


def _allreduce(plan: Plan, w: Workload, links: _Links, finish: list[float], layers: tuple[int, ...]) -> None:
    """Ring all-reduce of every gradient group, step by step, rings interleaved in time."""
    dims = plan.dims
    pp = dims.pipeline
    rings = [g for g in dims.gradient_groups() if len(g) > 1]
    events = []
    for i, ring in enumerate(rings):
        p = dims.coords(ring[0])["pipeline"]
        chunk = w.stage_params(layers[p], p == 0, p == pp - 1) / dims.tensor * BF16 / len(ring)
        heapq.heappush(events, (max(finish[r] for r in ring), i, 0, chunk))
    while events:
        t, i, step, chunk = heapq.heappop(events)
        ring = rings[i]
        end = max(links.send(t, x, y, chunk) for x, y in zip(ring, ring[1:] + ring[:1]))
        if step + 1 < 2 * (len(ring) - 1):
            heapq.heappush(events, (end, i, step + 1, chunk))
        else:
            for r in ring:
                finish[r] = end


