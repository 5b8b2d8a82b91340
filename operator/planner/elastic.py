"""How many replicas a job runs with for the ranks available now (``spec.elastic``).

Without ``elastic`` a job needs all its ranks. With it, each group first shrinks to the pods
its matching nodes hold (``capacity.group_limits`` on Kubernetes), then replicas are removed
from the last worker group first until the world fits the available ranks (the local rank
budget), divides by the sequence degree and still gives every data-parallel rank a sample;
below ``minReplicas`` nothing runs. When capacity returns, the same rule gives the spec's
replicas back. The spec's replicas are ``workers[].replicas``, or ``elastic.replicas`` when
set (``kubectl scale``: ``TrainingJobSpec.replicas_wanted``).
"""

from __future__ import annotations

from shardwright.operator.api import TrainingJobSpec

from .plan import Plan, plan_uniform


def replicas_for_capacity(
    spec: TrainingJobSpec, ranks_available: int | None, group_limits: dict[str, int] | None = None
) -> dict[str, int] | None:
    """Replicas per group for ``ranks_available`` ranks in all (None: unbounded) and at most
    ``group_limits[name]`` pods in a group (absent: unbounded); None if not even the minimum fits."""
    limits, wanted = group_limits or {}, spec.replicas_wanted()
    replicas = {name: min(n, limits.get(name, n)) for name, n in wanted.items()}
    if ranks_available is None and replicas == wanted:
        return replicas
    ranks_available = float("inf") if ranks_available is None else ranks_available
    per_replica = {g.name: g.ranks_per_replica for g in spec.workers}
    sp = spec.parallelism.sequence.degree
    floor = spec.elastic.min_replicas if spec.elastic else sum(g.replicas for g in spec.workers)
    while sum(replicas.values()) >= floor:
        world = sum(n * per_replica[name] for name, n in replicas.items())
        if world <= ranks_available and world % sp == 0 and spec.data.global_batch >= world // sp:
            return replicas
        shrinkable = [g.name for g in spec.workers if replicas[g.name] > 0]
        replicas[shrinkable[-1]] -= 1
    return None


def plan_for_capacity(
    spec: TrainingJobSpec, ranks_available: int | None, group_limits: dict[str, int] | None = None
) -> Plan | None:
    """The uniform plan at the largest feasible size, or None when the job cannot run."""
    replicas = replicas_for_capacity(spec, ranks_available, group_limits)
    return None if replicas is None else plan_uniform(spec, replicas)
