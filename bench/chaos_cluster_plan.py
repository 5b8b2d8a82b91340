"""A seeded fault plan for one run of the cluster chaos harness, and the job it strikes.
Pure (no cluster, no torch), so a plan is reproduced from its seed alone.

Faults strike at moments, not steps: the harness waits ``delay_s`` after the one before,
then until there is something to strike (a job Running in full, every node Ready, two
operator replicas), then strikes. ``pick`` chooses among
what is there at that moment (a job, a rank, a node), so the plan is the same for a seed
while what it hits depends on the run. Kinds and weights are ``chaos_plan.KINDS["cluster"]``.
"""

from __future__ import annotations

import dataclasses
import random
from typing import Any

import yaml

from bench import chaos_plan

KINDS = chaos_plan.KINDS["cluster"]
#: Kinds that end the struck job's generation (each must cost it exactly one restart).
RESTARTING = ("pod-delete", "kill", "hang", "node-lost", "corrupt-checkpoint")
#: Seconds from one fault to the next (which then waits for something to strike).
DELAYS = (1.0, 8.0)


@dataclasses.dataclass(frozen=True)
class Fault:
    kind: str
    delay_s: float
    #: Chooses the job, rank or node among those there when it strikes.
    pick: int

    def text(self) -> str:
        return f"{self.kind}@+{self.delay_s:.1f}s#{self.pick}"


@dataclasses.dataclass(frozen=True)
class Plan:
    seed: int
    jobs: int
    faults: tuple[Fault, ...]

    def describe(self) -> str:
        return f"seed {self.seed}: {self.jobs} jobs: " + " ".join(f.text() for f in self.faults)


def draw(seed: int, faults: int, jobs: int = 3, kinds: tuple[str, ...] = ()) -> Plan:
    """The plan of run ``seed``; the same arguments give the same plan. ``kinds``: these
    kinds in this order (a short run that must cover several), else drawn by weight."""
    rng = random.Random(seed)
    kinds = list(kinds) or rng.choices(list(KINDS), weights=list(KINDS.values()), k=faults)
    return Plan(seed, jobs, tuple(Fault(k, round(rng.uniform(*DELAYS), 1), rng.randrange(1 << 16)) for k in kinds))


@dataclasses.dataclass(frozen=True)
class JobShape:
    """The tiny example made for faults: CPU ranks, short steps, frequent checkpoints."""

    replicas: int = 2
    steps: int = 1500
    interval: int = 50
    keep: int = 3
    deadline_s: int = 40
    max_restarts: int = 40

    def manifest(self, example: dict[str, Any], name: str) -> dict[str, Any]:
        doc = yaml.safe_load(yaml.safe_dump(example))
        doc["metadata"] = {"name": name}
        spec = doc["spec"]
        spec["training"]["steps"] = self.steps
        spec["checkpoint"] = {"intervalSteps": self.interval, "keep": self.keep}
        spec["failurePolicy"] = {"maxRestarts": self.max_restarts, "progressDeadlineSeconds": self.deadline_s,
                                 "backoff": {"initialSeconds": 0.5, "maxSeconds": 2}}
        group = spec["workers"][0]
        group["replicas"] = self.replicas
        # A NotReady node's pods are evicted within seconds, not the default 300.
        group["template"] = {"spec": {"tolerations": [
            {"key": f"node.kubernetes.io/{t}", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 2}
            for t in ("not-ready", "unreachable")]}}
        return doc
