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
from .network import Link, NetworkSettings, link
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
    """FIFO queues, each a slot of ``free``: every node's NIC egress and ingress, every GPU's local port."""

    def __init__(self, nodes: list[Node], net: NetworkSettings) -> None:
        self.nodes, self.net = nodes, net
        slot: dict[str, int] = {}
        #: Per rank: the slot of its node's NIC egress (ingress is the next one).
        self.nic = [slot.setdefault(n.name, 2 * len(slot)) for n in nodes]
        self.ports = 2 * len(slot)
        self.free = [0.0] * (self.ports + len(nodes))
        self.network_bytes = 0.0
        self.links: dict[tuple[int, int], Link] = {}

    def route(self, pairs: list[tuple[int, int]]) -> list[tuple[tuple[int, int], int, float, float, bool]]:
        """Queue entries of a batch of sends issued together, ``pairs`` of (src, dst) ranks:
        (queue slots, messages, latency, seconds per byte, crosses nodes) per run of
        consecutive pairs between the same two nodes (one run per pair inside a node:
        each GPU has its own port)."""
        runs: list[list] = []
        for src, dst in pairs:
            l = self.link(src, dst)
            keys = (self.nic[src], self.nic[dst] + 1) if l.crosses_nodes else (self.ports + src,) * 2
            if runs and l.crosses_nodes and runs[-1][0] == keys:
                runs[-1][1] += 1
            else:
                runs.append([keys, 1, l.latency, 1 / l.bandwidth, l.crosses_nodes])
        return [tuple(r) for r in runs]

    def link(self, src: int, dst: int) -> Link:
        """The link between two ranks' GPUs (node pairs recur, so each is made once)."""
        key = (self.nic[src], self.nic[dst])
        found = self.links.get(key)
        if found is None:
            found = self.links[key] = link(self.nodes[src], self.nodes[dst], self.net)
        return found

    @staticmethod
    def timed(route, nbytes: float) -> tuple[list[tuple[int, int, float]], float]:
        """A route (see :meth:`route`) for messages of ``nbytes``: (slot, slot, seconds
        the entry holds them) per entry, and the bytes that leave their node."""
        entries = [(a, b, count * (latency + nbytes * per_byte)) for (a, b), count, latency, per_byte, _ in route]
        return entries, sum(count * nbytes for _, count, _, _, crosses in route if crosses)

    def across(self, timed) -> tuple[tuple, float]:
        """``timed`` without its sends inside a node, and the longest of those."""
        entries, nbytes = timed
        local = [seconds for a, _, seconds in entries if a >= self.ports]
        return ([e for e in entries if e[0] < self.ports], nbytes), max(local, default=0.0)

    def send(self, ready: float, timed) -> float:
        """Arrival of the last message of a batch sent at ``ready`` (see :meth:`timed`)."""
        entries, nbytes = timed
        free = self.free
        arrival = ready
        for a, b, seconds in entries:
            start = free[a]  # why: compares, not max(): this is the simulator's innermost loop
            if ready > start:
                start = ready
            if free[b] > start:
                start = free[b]
            free[a] = free[b] = end = start + seconds
            if end > arrival:
                arrival = end
        self.network_bytes += nbytes
        return arrival


def simulate(plan: Plan, inventory: Inventory, w: Workload, net: NetworkSettings = NetworkSettings(), s: CostSettings = CostSettings()) -> Simulation:
    dims = plan.dims
    dp, pp, sp, tp = dims.data, dims.pipeline, dims.sequence, dims.tensor
    inner = sp * tp
    by_name = {n.name: n for n in inventory.nodes}
    nodes = [by_name[r.node] for r in plan.ranks]
    rate = [n.gpu.tflops * 1e12 for n in nodes]
    links = _Links(nodes, net)
    layers = plan.stage_layers or (w.layers,)
    mb = plan.micro_batch or 1
    samples = plan.samples or tuple([w.global_batch // dp] * dp)
    sizes = [[min(mb, n - i) for i in range(0, n, mb)] for n in samples]
    # Group g = p * dp + d (stage p, data index d) holds ranks g * inner .. (g + 1) * inner - 1.
    groups = range(pp * dp)

    def members(g: int) -> list[int]:
        return list(range(g * inner, (g + 1) * inner))

    # Per group: its slowest member's rate and the slowest hops of its tensor and sequence
    # rings (each member's time is its own; the group's op ends with the slowest).
    slowest_rate = [min(rate[r] for r in members(g)) for g in groups]
    hops = [_group_hops(members(g), nodes, net, sp, tp) for g in groups]
    durations: dict[tuple, tuple[float, float]] = {}

    def op_time(g: int, size: int, backward: bool) -> tuple[float, float]:
        """(seconds, FLOPs) of forward/backward of one micro-batch of ``size`` on group g."""
        key = (g, size, backward)
        if key not in durations:
            p = g // dp
            full = w.layer_flops(size, plan.recompute) * layers[p]
            fraction = (3 / 4 if plan.recompute else 2 / 3) if backward else (1 / 4 if plan.recompute else 1 / 3)
            flops = full * fraction
            if p == pp - 1:
                flops += w.head_flops(size) * (2 / 3 if backward else 1 / 3)
            seconds = flops / inner / slowest_rate[g] + _collectives(g, size, backward)
            durations[key] = (seconds, flops)
        return durations[key]

    def _collectives(g: int, size: int, backward: bool) -> float:
        """Per-layer tensor all-reduces and sequence ring passes, over the group's own links."""
        tensor_hop, sequence_hop = hops[g]
        stage_layers = layers[g // dp]
        seconds = 0.0
        if tp > 1:
            count = w.tensor_allreduces(plan.recompute) - 2 if backward else 2
            chunk = w.activation_bytes(size) / sp / tp
            seconds += stage_layers * count * 2 * (tp - 1) * (chunk * tensor_hop[0] + tensor_hop[1])
        if sp > 1:
            share = 2 / 3 if backward else 1 / 3
            nbytes = w.sequence_bytes_per_layer(size, sp) / tp * share
            seconds += stage_layers * (nbytes * sequence_hop[0] + (sp - 1) * sequence_hop[1] * (2 if backward else 1))
        return seconds

    # Boundary sends of group g to its neighbour stage: one per (sequence, tensor) rank
    # pair. Consecutive pairs between the same two nodes queue back to back on those NICs,
    # so they are one queue entry of k messages (the same times as k separate ones).
    def boundary(g: int, backward: bool, sizes: tuple[int, ...]) -> tuple:
        """Queue times of group g's sends of a micro-batch of each of ``sizes`` (None: no neighbour)."""
        target = g - dp if backward else g + dp
        if not 0 <= target < len(groups):
            return (None,) * len(sizes)
        route = links.route(list(zip(members(g), members(target))))
        return tuple(links.timed(route, w.activation_bytes(size) / inner) for size in sizes)

    # Per group: its ops in 1F1B order (warm-up forwards, then alternate, then drain
    # backwards) as (backward, micro-batch); every micro-batch is full but maybe the last,
    # so each op's seconds and sends are looked up as [last][backward].
    orders: dict[tuple[int, int], list[tuple[bool, int]]] = {}
    order, last, seconds_of, sends_of = [], [], [], []
    group_flops = [0.0] * len(groups)
    for g in groups:
        p, d = divmod(g, dp)
        m = len(sizes[d])
        warm = min(pp - p - 1, m)
        if (warm, m) not in orders:
            seq = [(False, j) for j in range(warm)]
            f, b = warm, 0
            while b < m:
                if f < m:
                    seq.append((False, f))
                    f += 1
                seq.append((True, b))
                b += 1
            orders[(warm, m)] = seq
        order.append(orders[(warm, m)])
        last.append(m - 1)
        full, partial = (sizes[d] or [mb])[0], (sizes[d] or [mb])[-1]  # why: a data index may get no samples
        cost = {(size, b): op_time(g, size, b) for size in (full, partial) for b in (False, True)}
        seconds_of.append(tuple(tuple(cost[(size, b)][0] for b in (False, True)) for size in (full, partial)))
        sends_of.append(tuple(zip(*(boundary(g, b, (full, partial)) for b in (False, True)))))
        flops = tuple(tuple(cost[(size, b)][1] for b in (False, True)) for size in (full, partial))
        total = 0.0
        for b, j in order[g]:
            total += flops[j == m - 1][b]
        group_flops[g] = total

    # arrived[g][backward][j]: when micro-batch j's input (activations, or gradients for a
    # backward) reached group g; None where the group has it from the start.
    arrived = [(None if g < dp else [None] * len(sizes[g % dp]), None if g >= (pp - 1) * dp else [None] * len(sizes[g % dp])) for g in groups]
    cursor = [0] * len(groups)
    group_free = [0.0] * len(groups)
    events: list[tuple] = []
    counter = itertools.count()
    push = heapq.heappush
    towards = (dp, -dp)  # the neighbour group of a forward's and a backward's sends

    def advance(g: int) -> None:
        """Start every op of group g whose input is there, in its order; queue the end of
        each that sends, with where its sends go (the group's last op end is ``group_free[g]``)."""
        seq, i, free, inputs, lastj, seconds, sends = order[g], cursor[g], group_free[g], arrived[g], last[g], seconds_of[g], sends_of[g]
        while i < len(seq):
            backward, j = seq[i]
            got = inputs[backward]
            if got is not None:
                ready = got[j]
                if ready is None:
                    break
                if ready > free:
                    free = ready
            free += seconds[j == lastj][backward]
            route = sends[j == lastj][backward]
            if route is not None:
                push(events, (free, next(counter), g + towards[backward], backward, j, route))
            i += 1
        cursor[g] = i
        group_free[g] = free

    for g in groups:
        advance(g)
    # Events are op ends, in time order, so every NIC queue is served first come first served.
    pop, send = heapq.heappop, links.send
    while events:
        t, _, target, backward, j, route = pop(events)
        arrived[target][backward][j] = send(t, route)
        advance(target)

    finish = [0.0] * dims.world_size
    busy = [0.0] * dims.world_size
    for g in groups:
        for r in members(g):
            finish[r] = group_free[g]
            busy[r] = group_flops[g] / inner / rate[r]
    _allreduce(plan, w, links, finish, layers)
    shard = dp * sp if s.shard_optimizer else 1
    for r in range(dims.world_size):
        p = r // (dp * inner)
        params = w.stage_params(layers[p], p == 0, p == pp - 1) / tp
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
    sends, across = [], []
    events = []
    for i, ring in enumerate(rings):
        p = dims.coords(ring[0])["pipeline"]
        chunk = w.stage_params(layers[p], p == 0, p == pp - 1) / dims.tensor * BF16 / len(ring)
        sends.append(links.timed(links.route(list(zip(ring, ring[1:] + ring[:1]))), chunk))
        across.append(links.across(sends[-1]))
        heapq.heappush(events, (max(finish[r] for r in ring), i, 0))
    while events:
        t, i, step = heapq.heappop(events)
        ring = rings[i]
        if step == 0:
            end = links.send(t, sends[i])
        else:  # why: each rank's port is its own ring's and idle since the last step, so it only adds its time
            nic, local = across[i]
            end = max(links.send(t, nic), t + local)
        if step + 1 < 2 * (len(ring) - 1):
            heapq.heappush(events, (end, i, step + 1))
        else:
            for r in ring:
                finish[r] = end
