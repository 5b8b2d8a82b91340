"""Which GPU each rank gets: pods onto nodes, then ranks onto the pods' GPUs.

Pods first: a worker group's replica is one pod, so its ``ranksPerReplica`` GPUs sit on
one node that matches the group's ``gpuType`` and ``nodeSelector``. Then ranks: the node
order (one of :data:`ORDERS`) decides which GPUs are neighbours in the mesh. Tensor x
sequence groups are cut from whole nodes first, so they never cross a node when they fit
inside one; only left-over GPUs are combined across nodes. Because the pipeline axis is
the slowest-varying (see ``ParallelDims``), each stage is a contiguous run of that order:
sorting by speed gives stages of one GPU type (Zorse's uneven stages), sorting by fabric
keeps data-parallel rings inside a rack (Holmes).
"""

from __future__ import annotations

import dataclasses
import math
from collections import Counter
from collections.abc import Callable

from shardwright.operator.api import TrainingJobSpec

from .dims import ParallelDims
from .inventory import Inventory, NicClass, Node


class Infeasible(ValueError):
    """No plan fits; the message names the limit (memory, GPU count, GPU type)."""


@dataclasses.dataclass(frozen=True)
class Slot:
    """One GPU a rank can run on: the node and the pod (group, replica, local rank)."""

    node: Node
    group: str
    replica: int
    local_rank: int


def _speed(n: Node):
    return (-n.gpu.tflops, n.nic is not NicClass.RDMA, -n.nic_gbps, n.zone, n.block, n.name)


def _fabric(n: Node):
    return (n.zone, n.block, n.nic is not NicClass.RDMA, -n.gpu.tflops, n.name)


def _nic(n: Node):
    return (n.nic is not NicClass.RDMA, -n.nic_gbps, -n.gpu.tflops, n.zone, n.block, n.name)


def _slow_first(n: Node):
    return (n.gpu.tflops, n.nic is not NicClass.RDMA, -n.nic_gbps, n.zone, n.block, n.name)


def _name(n: Node):
    return (n.name,)


#: Node orders the search tries; ``name`` is the naive baseline's.
ORDERS: dict[str, Callable[[Node], tuple]] = {
    "speed": _speed,
    "fabric": _fabric,
    "nic": _nic,
    "slow-first": _slow_first,
    "name": _name,
}


def place_pods(spec: TrainingJobSpec, inventory: Inventory, order: str = "speed") -> list[Slot]:
    """Every rank's pod slot, pods packed onto the preferred nodes first (first fit)."""
    free = {n.name: n.gpus for n in inventory.nodes}
    slots: list[Slot] = []
    for group in spec.workers:
        r = group.ranks_per_replica
        eligible = [n for n in sorted(inventory.nodes, key=ORDERS[order]) if _eligible(n, group)]
        full = 0  # eligible[:full] have no room for a pod (room only shrinks), so first fit starts here
        for replica in range(group.replicas):
            while full < len(eligible) and free[eligible[full].name] < r:
                full += 1
            node = eligible[full] if full < len(eligible) else None
            if node is None:
                have = sum(free[n.name] // r for n in eligible)
                what = f" of type {group.gpu_type}" if group.gpu_type else ""
                raise Infeasible(
                    f"worker group {group.name!r} needs {group.replicas} pods of {r} GPUs{what} on one node each; "
                    f"the nodes have room for {have + replica} (total GPUs{what}: {sum(n.gpus for n in eligible)})"
                )
            free[node.name] -= r
            slots += [Slot(node, group.name, replica, i) for i in range(r)]
    return slots


def _eligible(node: Node, group) -> bool:
    if group.gpu_type and group.gpu_type.lower() not in (node.gpu.name.lower(), node.product.lower()):
        return False
    return node.matches(group.node_selector)


#: Prefix of an explicit node order: ``nodes:n1,n2,...`` (see :func:`node_sequences`).
EXPLICIT = "nodes:"


def order_key(order: str) -> Callable[[Node], tuple]:
    """Sort key of a named order (:data:`ORDERS`) or an explicit ``nodes:a,b,c`` one."""
    if order.startswith(EXPLICIT):
        position = {name: i for i, name in enumerate(order[len(EXPLICIT):].split(","))}
        return lambda n: (position.get(n.name, len(position)), n.name)
    return ORDERS[order]


def node_sequences(slots: list[Slot], limit: int) -> list[str]:
    """Every distinct order of the slots' nodes as ``nodes:...`` orders, or none if more than ``limit``.

    Nodes alike in GPU type and memory, slots used, NIC and place are interchangeable (the
    plan cannot tell them apart), so only orders of their kinds count; within a kind,
    nodes go in name order. Small clusters have few (4 distinct nodes: 24), which lets the
    search try them all; large ones have too many and keep to :data:`ORDERS`.
    """
    used = Counter(s.node.name for s in slots)
    nodes = sorted({s.node.name: s.node for s in slots}.values(), key=lambda n: n.name)
    kind = {n.name: (n.gpu.name, n.gpu_memory_bytes, used[n.name], n.nic, n.nic_gbps, n.zone, n.block) for n in nodes}
    counts = Counter(kind[n.name] for n in nodes)
    distinct = math.factorial(len(nodes))
    for c in counts.values():
        distinct //= math.factorial(c)
    if distinct > limit:
        return []
    kinds = sorted(counts, key=lambda k: min(n.name for n in nodes if kind[n.name] == k))
    members = {k: [n.name for n in nodes if kind[n.name] == k] for k in kinds}
    out: list[str] = []

    def extend(prefix: list, left: dict) -> None:
        if not any(left.values()):
            taken = {k: iter(members[k]) for k in kinds}
            out.append(EXPLICIT + ",".join(next(taken[k]) for k in prefix))
            return
        for k in kinds:
            if left[k]:
                left[k] -= 1
                extend(prefix + [k], left)
                left[k] += 1

    extend([], {k: counts[k] for k in kinds})
    return out


def arrange(slots: list[Slot], dims: ParallelDims, order: str) -> list[Slot]:
    """Slot of each rank (index = rank): inner groups cut from whole nodes first."""
    inner = dims.tensor * dims.sequence
    by_node: dict[str, list[Slot]] = {}
    for slot in slots:
        by_node.setdefault(slot.node.name, []).append(slot)
    nodes = sorted((group[0].node for group in by_node.values()), key=order_key(order))
    chunks: list[list[Slot]] = []
    leftover: list[Slot] = []
    for node in nodes:
        mine = by_node[node.name]
        whole = len(mine) // inner * inner
        chunks += [mine[i:i + inner] for i in range(0, whole, inner)]
        leftover += mine[whole:]  # why: only these may form a group that crosses nodes
    chunks += [leftover[i:i + inner] for i in range(0, len(leftover), inner)]
    return [slot for chunk in chunks for slot in chunk]


def arranger(slots: list[Slot]) -> Callable[[ParallelDims, str], list[Slot]]:
    """:func:`arrange` over ``slots``, each arrangement made once: it reads of the degrees
    only the tensor x sequence group size, which most splits of a search share."""
    made: dict[tuple[str, int], list[Slot]] = {}

    def arranged(dims: ParallelDims, order: str) -> list[Slot]:
        key = (order, dims.tensor * dims.sequence)
        if key not in made:
            made[key] = arrange(slots, dims, order)
        return made[key]

    return arranged
