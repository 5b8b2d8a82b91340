"""The cheapest mix of GPU types that serves a pool's traffic within its SLO (Mélange).

Mélange (Griggs et al., 2024) treats GPU types as bins with a cost and a capacity and the
traffic as items: each request size (a length bucket) arrives at its own rate, and a
replica of type k serves ``cap[k][b]`` requests a second of bucket ``b`` at the SLO
(``servingperf.capacity``). The mix is the integer program

    minimise   sum_k cost_k n_k
    subject to sum_k y_kb = rate_b                    every bucket is served
               sum_b y_kb / cap_kb <= n_k             no replica is loaded past its capacity
               sum_{k of type g} tensor_k n_k <= gpus_g   the cluster has the GPUs
               n_k integer >= 0,  y_kb >= 0

solved exactly by branch and bound over the replica counts ``n``, each node a linear
program (``simplex.minimize``). Mixing pays where one type is cheapest for short requests
and another for long ones, and at low rates, where a few small GPUs cost less than the
one large GPU that a single-type pool would need.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence

from .catalog import GpuType
from .servingperf import Capacity, PerfSettings, Replica, ServedModel, capacity
from .simplex import minimize

#: Tensor degrees a replica may use (within one node).
TENSOR_DEGREES = (1, 2, 4, 8)
#: Branch-and-bound nodes explored before giving up on proving the optimum.
MAX_NODES = 20_000


@dataclasses.dataclass(frozen=True)
class Bucket:
    """Requests of one size and how many arrive a second."""

    input_tokens: int
    output_tokens: int
    rate: float

    @property
    def label(self) -> str:
        return f"{self.input_tokens}/{self.output_tokens}"


@dataclasses.dataclass(frozen=True)
class Available:
    """GPUs of one type in the cluster: in all, and the most on one node."""

    gpu: GpuType
    gpus: int
    per_node: int


@dataclasses.dataclass(frozen=True)
class Option:
    """A replica shape the mix may use, and what it sustains per bucket (None: not at the SLO)."""

    replica: Replica
    capacities: tuple[Capacity | None, ...]


@dataclasses.dataclass(frozen=True)
class Mix:
    """Replicas per option and the requests a second of each bucket each option serves."""

    counts: tuple[tuple[Option, int], ...]
    cost_per_hour: float
    #: ``served[i][b]``: requests/s of bucket b on option ``counts[i]``'s replicas.
    served: tuple[tuple[float, ...], ...]
    #: False when the search stopped at ``MAX_NODES`` with this mix as the best found.
    proven: bool = True

    @property
    def replicas(self) -> int:
        return sum(n for _, n in self.counts)


@dataclasses.dataclass(frozen=True)
class MixPlan:
    buckets: tuple[Bucket, ...]
    options: tuple[Option, ...]
    #: The cheapest mix, or None when no mix of the cluster's GPUs meets the SLO.
    best: Mix | None
    #: The cheapest pool of each single GPU type that serves everything (None: it cannot).
    single: tuple[tuple[GpuType, Mix | None], ...]

    @property
    def cheapest_single(self) -> tuple[GpuType, Mix] | None:
        found = [(g, m) for g, m in self.single if m is not None]
        return min(found, key=lambda gm: gm[1].cost_per_hour) if found else None


def options(model: ServedModel, available: Sequence[Available], buckets: Sequence[Bucket],
            tpot_s: float | None, ttft_s: float | None, s: PerfSettings = PerfSettings()) -> list[Option]:
    """Every replica shape the cluster can host that serves at least one bucket at the SLO."""
    out = []
    for a in available:
        for tensor in TENSOR_DEGREES:
            if tensor > a.per_node:
                break
            replica = Replica(a.gpu, tensor)
            caps = tuple(capacity(model, replica, b.input_tokens, b.output_tokens, tpot_s, ttft_s, s) for b in buckets)
            if any(caps):
                out.append(Option(replica, caps))
    return out


def plan(model: ServedModel, available: Sequence[Available], buckets: Sequence[Bucket],
         tpot_s: float | None, ttft_s: float | None, s: PerfSettings = PerfSettings()) -> MixPlan:
    """The cheapest mix over every GPU type available, and the cheapest of each type alone."""
    opts = options(model, available, buckets, tpot_s, ttft_s, s)
    gpus = {a.gpu.name: a.gpus for a in available}
    single = tuple((a.gpu, cheapest([o for o in opts if o.replica.gpu == a.gpu], buckets, gpus)) for a in available)
    return MixPlan(tuple(buckets), tuple(opts), cheapest(opts, buckets, gpus), single)


def cheapest(opts: Sequence[Option], buckets: Sequence[Bucket], gpus: Mapping[str, int]) -> Mix | None:
    """The integer program above over ``opts``, by depth-first branch and bound."""
    if not opts or any(all(o.capacities[b] is None for o in opts) for b in range(len(buckets))):
        return None
    k = len(opts)
    # Variables: n_0..n_{k-1}, then y for every (option, bucket) the option can serve.
    pairs = [(i, b) for i in range(k) for b in range(len(buckets)) if opts[i].capacities[b] is not None]
    width = k + len(pairs)
    cost = [o.replica.cost_per_hour for o in opts] + [0.0] * len(pairs)
    rows = []
    for b, bucket in enumerate(buckets):
        rows.append(([1.0 if j >= k and pairs[j - k][1] == b else 0.0 for j in range(width)], "==", bucket.rate))
    for i, o in enumerate(opts):
        row = [0.0] * width
        row[i] = -1.0
        for j, (oi, b) in enumerate(pairs):
            if oi == i:
                row[k + j] = 1.0 / o.capacities[b].requests_per_second
        rows.append((row, "<=", 0.0))
    for name, count in gpus.items():
        row = [float(o.replica.tensor) if o.replica.gpu.name == name else 0.0 for o in opts] + [0.0] * len(pairs)
        if any(row):
            rows.append((row, "<=", float(count)))

    best: tuple[float, list[float]] | None = None
    stack: list[dict[int, tuple[int, int | None]]] = [{}]  # bounds on n_i: (lowest, highest)
    explored = 0
    while stack and explored < MAX_NODES:
        bounds = stack.pop()
        explored += 1
        extra = []
        for i, (lo, hi) in bounds.items():
            unit = [0.0] * width
            unit[i] = 1.0
            if lo > 0:
                extra.append((unit, ">=", float(lo)))
            if hi is not None:
                extra.append((unit, "<=", float(hi)))
        solved = minimize(cost, rows + extra)
        if solved is None or (best is not None and solved[0] >= best[0] - 1e-9):
            continue
        value, x = solved
        fractional = [(abs(x[i] - round(x[i])), i) for i in range(k) if abs(x[i] - round(x[i])) > 1e-6]
        if not fractional:
            best = (value, x)
            continue
        _, i = max(fractional)
        lo, hi = bounds.get(i, (0, None))
        down, up = math.floor(x[i]), math.ceil(x[i])
        stack.append({**bounds, i: (lo, down)})  # explored second
        stack.append({**bounds, i: (up, hi)})  # rounding up first finds a whole mix soonest
    if best is None:
        return None
    value, x = best
    served = [[0.0] * len(buckets) for _ in opts]
    for j, (i, b) in enumerate(pairs):
        served[i][b] = x[k + j]
    counts = [(o, round(x[i])) for i, o in enumerate(opts)]
    keep = [i for i, (_, n) in enumerate(counts) if n > 0]
    return Mix(tuple(counts[i] for i in keep), sum(o.replica.cost_per_hour * n for o, n in counts),
               tuple(tuple(served[i]) for i in keep), proven=not stack)
