"""A seeded fault plan for one chaos run: which job, which faults at which steps, what must
happen. Pure (no Ray, no torch), so a plan is reproduced from its seed alone and unit-tested.

A plan is a list of ``workers/faults.py`` faults, written out as the ``--inject`` texts the
CLI parses, plus the job they strike and the outcome they must lead to. Constraints keep a
plan meaningful rather than merely random:

- restart-causing faults (kill, kill while a checkpoint is written, hang, shrink) fire one
  per generation, in step order, so each generation reaches the step of its fault;
- damaged checkpoints are the newest ones the generation about to fail surely committed,
  so the restart has to skip every one of them;
- an elastic job shrinks and grows after its other faults, ``CAPACITY_GAP`` steps apart;
  one or two of its kills and hangs come after the grow, in the regrown generation and the
  next, a few steps ``into`` each: shrink and grow act on the controller's last poll of the
  step, which lags the ranks, so the step a resized generation resumes at is not known
  (half of them strike a rank the shrunk size does not have);
- the restart budget equals the restarts the plan needs, or, in a ``budget`` plan, one
  less: then the job must fail with ``BackoffLimitExceeded`` at the last restart fault.

The cluster target's kinds (node heartbeat lost, operator killed, ...) are in ``KINDS`` too;
its plans are drawn by bench/chaos_cluster_plan.py.
"""

from __future__ import annotations

import dataclasses
import random
from typing import Any

import yaml

from shardwright.workers.faults import Fault, parse_fault

#: Fault kinds a plan draws from, by target, with their weights.
KINDS = {"local": {"kill": 4, "kill-during-checkpoint": 2, "hang": 2, "corrupt-checkpoint": 3},
         # bench/chaos_cluster_plan.py: faults at moments on the real control plane.
         "cluster": {"pod-delete": 3, "kill": 3, "hang": 2, "node-lost": 2, "operator-killed": 3, "apiserver-restart": 2,
                     "etcd-restart": 2, "conflict": 3, "corrupt-checkpoint": 2}}
#: Kinds that end a generation with a failure (each spends one restart).
RESTARTING = ("kill", "kill-during-checkpoint", "hang", "shrink", "kill-after-resize", "hang-after-resize")
#: Share of runs on the elastic job (shrink and grow); the rest run at a fixed size.
ELASTIC_SHARE = 0.3
#: Share of fixed-size runs whose restart budget is one short of what the plan needs.
BUDGET_SHARE = 0.15
#: Steps between a restart fault and the next (the next generation resumes from at most the first).
GAP = 4
#: Steps from a shrink to the grow, and kept free for both at the end of an elastic job.
CAPACITY_GAP = 15
#: Steps an elastic job keeps after its grow for the faults after it: the grow lands up to
#: 30 steps late (seen in CI), then each fault a few steps into its generation.
ROOM_AFTER_GROW = 45
#: How many steps into its generation a fault after the grow strikes.
INTO = range(2, GAP + 3)
#: A damaged checkpoint is at least this many steps before the fault that makes a restart
#: load it, so rank 0 has seen the (asynchronous) commit and damaged it in time; a fault
#: closer to a checkpoint damages none (which one the restart loads is not certain).
COMMIT_LAG = 4


@dataclasses.dataclass(frozen=True)
class Target:
    """The job a plan strikes: the embedded default's tiny example, made longer-lived."""

    name: str
    replicas: int
    steps: int
    interval: int = 10
    keep: int = 3
    #: Seconds without a step before a generation counts as hung.
    deadline_s: int = 8
    #: Elastic lower bound (None: a fixed-size job).
    min_replicas: int | None = None

    def manifest(self, example: dict[str, Any], max_restarts: int) -> dict[str, Any]:
        """``example`` (a TrainingJob document) with this target's size, length and policy."""
        doc = yaml.safe_load(yaml.safe_dump(example))
        spec = doc["spec"]
        doc["metadata"]["name"] = f"chaos-{self.name}"
        spec["workers"][0]["replicas"] = self.replicas
        spec["training"]["steps"] = self.steps
        spec["checkpoint"] = {"intervalSteps": self.interval, "keep": self.keep}
        spec["failurePolicy"] = {"maxRestarts": max_restarts, "progressDeadlineSeconds": self.deadline_s, "backoff": {"initialSeconds": 0.5}}
        if self.min_replicas is not None:
            spec["elastic"] = {"minReplicas": self.min_replicas, "maxReplicas": self.replicas}
        return doc


FIXED = Target("fixed", replicas=2, steps=60)
ELASTIC = Target("elastic", replicas=4, steps=60 + ROOM_AFTER_GROW, min_replicas=2)


@dataclasses.dataclass(frozen=True)
class Plan:
    seed: int
    target: Target
    faults: tuple[Fault, ...]
    max_restarts: int

    @property
    def restarts_needed(self) -> int:
        return sum(kind_of(f) in RESTARTING for f in self.faults)

    @property
    def expect_failure(self) -> bool:
        return self.max_restarts < self.restarts_needed

    @property
    def injects(self) -> list[str]:
        return [fault_text(f) for f in self.faults]

    def describe(self) -> str:
        budget = f"maxRestarts {self.max_restarts}" + (" (one short: must fail)" if self.expect_failure else "")
        return f"seed {self.seed}: {self.target.name} job, {budget}: " + " ".join(f"--inject {t}" for t in self.injects)


def kind_of(fault: Fault) -> str:
    """The table's name for a fault: a kill during a checkpoint write is its own kind, and so
    is a kill or hang after a shrink and grow (counted ``into`` its generation)."""
    if fault.kind == "kill" and fault.during:
        return "kill-during-checkpoint"
    return f"{fault.kind}-after-resize" if fault.into is not None else fault.kind


def fault_text(fault: Fault) -> str:
    """The ``--inject`` text of ``fault``: its kind and every setting away from the default."""
    defaults = Fault(kind=fault.kind)
    pairs = [f"{key}={value}" for key, value in fault.model_dump(exclude={"kind"}).items() if value != getattr(defaults, key)]
    text = ":".join([fault.kind, *pairs])
    assert parse_fault(text) == fault, text  # the CLI must read back exactly this fault
    return text


def draw(seed: int, faults: int, target: str = "local") -> Plan:
    """The plan of run ``seed`` with ``faults`` faults; the same arguments give the same plan."""
    rng = random.Random(seed)
    job = ELASTIC if faults >= 2 and rng.random() < ELASTIC_SHARE else FIXED
    resizes = 2 if job is ELASTIC else 0
    kinds = rng.choices(list(KINDS[target]), weights=list(KINDS[target].values()), k=faults - resizes)
    if kinds and all(k == "corrupt-checkpoint" for k in kinds):
        kinds[0] = "kill"  # a damaged checkpoint matters only to a restart
    # An elastic job resizes after most of its other faults; one or two kills or hangs follow
    # the grow, counted in steps into their generations (shrink and grow take effect a poll
    # or two late, so the step a resized generation resumes at is not known).
    later = [i for i, k in enumerate(kinds) if k in ("kill", "hang")][-rng.randint(1, 2):] if resizes else []
    after = [kinds[i] for i in later]
    kinds = [k for i, k in enumerate(kinds) if i not in later]
    end = job.steps - 2 - (2 * CAPACITY_GAP + ROOM_AFTER_GROW if resizes else 0)
    plan = _restarts(rng, job, [k for k in kinds if k != "corrupt-checkpoint"], kinds.count("corrupt-checkpoint"), end)
    if resizes:
        shrink = Fault(kind="shrink", ranks=rng.choice((1, 2)), step=max((f.step for f in plan), default=0) + GAP + rng.randrange(GAP))
        plan += [shrink, Fault(kind="grow", step=shrink.step + CAPACITY_GAP + rng.randrange(GAP))]
        # The shrink fails a generation, the grow starts the regrown one.
        gen = 3 + sum(kind_of(f) in RESTARTING for f in plan[:-2])
        for i, kind in enumerate(after):
            smaller = range(job.replicas - shrink.ranks, job.replicas)  # ranks the shrunk size lacks
            rank = rng.choice(smaller) if rng.random() < 0.5 else rng.randrange(job.replicas)
            plan.append(Fault(kind=kind, rank=rank, into=rng.choice(INTO), gen=gen + i))
    needed = sum(kind_of(f) in RESTARTING for f in plan)
    budget = max(needed - 1, 0) if not resizes and rng.random() < BUDGET_SHARE else needed
    return Plan(seed, job, tuple(plan), budget)


def _restarts(rng: random.Random, job: Target, kinds: list[str], corrupt: int, end: int) -> list[Fault]:
    """Restart faults of ``kinds`` at increasing steps before ``end``, one per generation, and
    ``corrupt`` damaged checkpoints among those the failing generations write (the newest
    first). A fault with no room left is dropped."""
    faults, damaged, previous = [], set(), 0
    for i, kind in enumerate(kinds):
        room = range(previous + GAP, end - GAP * (len(kinds) - i - 1))
        choices = [s for s in room if s % job.interval == 0] if kind == "kill-during-checkpoint" else list(room)
        if not choices:
            continue
        step = rng.choice(choices)
        gen = 1 + sum(f.kind != "corrupt-checkpoint" for f in faults)
        faults.append(Fault(kind="hang" if kind == "hang" else "kill", rank=rng.randrange(job.replicas), step=step, gen=gen,
                            during="checkpoint" if kind == "kill-during-checkpoint" else None))
        newest = _newest_before(job, step)
        # Only as many as the job keeps: retention would delete an older one unseen.
        written = [c for c in range(newest, previous, -job.interval) if c not in damaged][: job.keep] if newest else []
        last = i == len(kinds) - 1
        for c in written[: corrupt if last else rng.randint(0, corrupt)]:
            damaged.add(c)
            corrupt -= 1
            faults.append(Fault(kind="corrupt-checkpoint", step=c, gen=gen))
        previous = step
    return sorted(faults, key=lambda f: (f.step, f.kind))


def _newest_before(job: Target, step: int) -> int | None:
    """The newest checkpoint surely committed (and seen by rank 0) when a fault strikes after
    ``step``: a kill fires before that step's own checkpoint is written; None when the
    newest may still be in flight, as a restart could then load it or the one before."""
    if step % job.interval == 0:
        return step - job.interval
    return step - step % job.interval if step % job.interval >= COMMIT_LAG else None
