"""The Plan value: degrees, where each rank runs, and its share of the work.

``plan_uniform`` is the placement when nothing is known about the hardware: ranks fill the
worker groups in order (group, replica, local rank) and every data-parallel rank gets the
same share. The heterogeneous search produces the same value.
"""

from __future__ import annotations

import dataclasses

from shardwright.operator.api import TrainingJobSpec

from .dims import ParallelDims


@dataclasses.dataclass(frozen=True)
class RankPlacement:
    rank: int
    group: str
    replica: int
    local_rank: int
    node: str | None = None
    gpu: str | None = None
    #: Relative work share of this rank's data-parallel slot (1.0 = even).
    share: float = 1.0


@dataclasses.dataclass(frozen=True)
class Plan:
    dims: ParallelDims
    ranks: tuple[RankPlacement, ...]
    predicted_step_seconds: float | None = None
    memory_per_gpu_bytes: int | None = None
    explanation: str = ""
    #: Samples per forward pass on every rank (None: the spec's microBatch).
    micro_batch: int | None = None
    #: Activations recomputed in the backward pass instead of stored.
    recompute: bool = False
    #: Layers of each pipeline stage (empty: one stage holds them all).
    stage_layers: tuple[int, ...] = ()
    #: Samples of each data-parallel index per step (empty: even).
    samples: tuple[int, ...] = ()
    #: Node order the ranks follow (see ``layout.ORDERS``); empty for the uniform plan.
    order: str = ""
    #: The simulator's step time for this plan (``simulate.py``), when the search ran it.
    simulated_step_seconds: float | None = None

    @property
    def world_size(self) -> int:
        return self.dims.world_size

    @property
    def data_shares(self) -> tuple[float, ...] | None:
        """Share of each data-parallel index, or None when all are even."""
        shares = tuple(self.ranks[self.dims.rank(data=d)].share for d in range(self.dims.data))
        return None if len(set(shares)) == 1 else shares

    @property
    def groups(self) -> dict[str, list[list[int]]]:
        """Ranks that communicate along each axis (gradients are averaged over data x sequence)."""
        d = self.dims
        return {"tensor": d.groups("tensor"), "sequence": d.groups("sequence"), "pipeline": d.groups("pipeline"), "data": d.groups("data")}

    @property
    def summary(self) -> str:
        return f"{self.dims.layout} over {self.world_size} ranks"


def plan_uniform(spec: TrainingJobSpec, replicas: dict[str, int] | None = None) -> Plan:
    """Even plan over the spec's worker groups (or ``replicas`` per group, when resized).

    With ``parallelism.auto`` the planner decides instead, on the embedded default's
    inventory: one node whose CPU ranks stand in for GPUs (``search.plan_job``).
    """
    if spec.parallelism.auto:
        from .search import plan_job  # why: search builds on this module

        return plan_job(spec, replicas=replicas)
    ranks: list[RankPlacement] = []
    for group in spec.workers:
        for replica in range(group.replicas if replicas is None else replicas.get(group.name, 0)):
            for local in range(group.ranks_per_replica):
                ranks.append(RankPlacement(len(ranks), group.name, replica, local, gpu=group.gpu_type))
    world = len(ranks)
    sp = spec.parallelism.sequence.degree
    dims = ParallelDims(data=world // sp, sequence=sp)
    if dims.world_size != world:
        raise ValueError(f"sequence degree {sp} does not divide the world size {world}")
    return Plan(dims=dims, ranks=tuple(ranks), explanation="uniform: ranks in group order, even shares")
