"""The invariants a chaos run must keep, checked on what the run recorded.

A run's history is what ``shardwright run`` leaves in its work directory (status.json,
events.jsonl, steps.jsonl, the rank logs) and what it printed; each check reads only
that and the plan, so a doctored history is enough to prove a check can fail.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

from shardwright.operator import jobdir

from bench import chaos_plan

#: Largest per-step loss difference after a resize (docs/determinism.md): only the order
#: of floating-point sums changes, the global batch and the data stream do not.
RESIZE_TOLERANCE = 5e-3
#: Events that end a generation with a failure (each is one restart, or the end of the job).
FAILURES = ("RankFailed", "ProgressDeadlineExceeded", "RanksLost")
_STARTS = ("GenerationStarted", "RestartedFromCheckpoint")
_GENERATION = re.compile(r"^Generation (\d+) ")


@dataclasses.dataclass(frozen=True)
class History:
    """What one run recorded."""

    status: dict[str, Any]
    events: list[dict[str, Any]]
    steps: list[dict[str, Any]]
    #: Every rank's log text, by rank (all generations appended).
    logs: dict[int, str]
    #: The CLI's output (capacity injections are reported there).
    output: str
    exit_code: int

    @classmethod
    def read(cls, workdir: Path, output: str, exit_code: int) -> History:
        job = jobdir.JobDir(workdir)
        logs = {rank: path.read_text(errors="replace") for rank, path in job.rank_logs().items()}
        return cls(job.status() or {}, job.events(), job.steps(), logs, output, exit_code)

    @property
    def curve(self) -> dict[int, float]:
        """Loss per step; a step trained again after a restart keeps its last value."""
        return {line["step"]: line["loss"] for line in self.steps}

    def reasons(self, *names: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e["reason"] in names]


@dataclasses.dataclass(frozen=True)
class Verdict:
    invariant: str
    ok: bool
    detail: str = ""


def check(plan: chaos_plan.Plan, run: History, reference: History) -> list[Verdict]:
    """Every invariant of ``run`` under ``plan``, against the fault-free ``reference``."""
    return [
        _outcome(plan, run),
        _loss(plan, run, reference),
        _restarts(plan, run),
        _one_generation_at_a_time(run),
        _faults_struck(plan, run),
        _rejected_only_damaged(plan, run),
    ]


def struck(plan: chaos_plan.Plan, fault, run: History) -> bool:
    """Whether the history shows ``fault`` struck: a kill's line in its rank's log, a hang's
    deadline event, a damaged checkpoint rejected, a capacity change announced."""
    if fault.kind == "kill":
        step = r"\d+" if fault.into is not None else str(fault.step)  # ``into``: whatever step its generation resumed at
        return re.search(f"rank {fault.rank}: injected fault kill after step {step} \\(generation {fault.gen}\\):", run.logs.get(fault.rank, "")) is not None
    if fault.kind == "hang":
        hangs = [f for f in plan.faults if f.kind == "hang"]
        return hangs.index(fault) < len(run.reasons("ProgressDeadlineExceeded"))
    if fault.kind == "corrupt-checkpoint":
        return fault.step in run.status.get("rejectedCheckpoints", [])
    return ("host(s) lost for good" if fault.kind == "shrink" else "capacity back") in run.output


def due(plan: chaos_plan.Plan, fault) -> bool:
    """Whether ``fault`` must strike: a plan that spends its budget ends at the generation
    that fails for good, and a checkpoint damaged there is never loaded."""
    if not plan.expect_failure:
        return True
    last = plan.max_restarts + 1
    return fault.gen < last if fault.kind == "corrupt-checkpoint" else fault.gen <= last


def _outcome(plan: chaos_plan.Plan, run: History) -> Verdict:
    phase = run.status.get("phase")
    failed = next((c for c in run.status.get("conditions", []) if c["type"] == "Failed" and c["status"] == "True"), None)
    if plan.expect_failure:
        ok = phase == "Failed" and failed is not None and failed["reason"] == "BackoffLimitExceeded" and run.exit_code == 1
        return Verdict("outcome", ok, f"{phase}, {failed['reason'] if failed else 'no Failed condition'}, exit {run.exit_code}")
    reason = f": {failed['reason']}: {failed['message']}" if failed else ""
    return Verdict("outcome", phase == "Complete" and run.exit_code == 0, f"{phase}{reason}, exit {run.exit_code}")


def _loss(plan: chaos_plan.Plan, run: History, reference: History) -> Verdict:
    """Bit for bit at the same world size; within RESIZE_TOLERANCE per step after a resize."""
    if plan.expect_failure:
        return Verdict("loss", True, "not checked: the job must fail")
    got, want = run.curve, reference.curve
    if sorted(got) != sorted(want):
        return Verdict("loss", False, f"steps {min(got, default=None)}..{max(got, default=None)} logged, {len(want)} expected")
    if not run.reasons("Resharded"):
        differ = [s for s in want if got[s] != want[s]]
        final = run.status.get("loss") == reference.status.get("loss")
        detail = f"final {run.status.get('loss')!r} vs {reference.status.get('loss')!r}" + (f", step {differ[0]} differs first" if differ else "")
        return Verdict("loss", not differ and final, detail)
    worst = max(abs(got[s] - want[s]) for s in want)
    return Verdict("loss", worst < RESIZE_TOLERANCE, f"resized: worst step difference {worst:.2e}")


def _restarts(plan: chaos_plan.Plan, run: History) -> Verdict:
    """The restarts counted equal the faults that needed one, and each came from a failure."""
    want = plan.max_restarts if plan.expect_failure else plan.restarts_needed
    counted = run.status.get("restarts")
    failures = len(run.reasons(*FAILURES))
    ok = counted == want and failures == want + plan.expect_failure
    return Verdict("restarts", ok, f"{counted} counted, {want} needed, {failures} failure events")


def _one_generation_at_a_time(run: History) -> Verdict:
    """Generations start once each, in order, and none trains a step after the next started."""
    starts = [(int(m.group(1)), e["time"]) for e in run.reasons(*_STARTS) if (m := _GENERATION.match(e["message"]))]
    numbers = [n for n, _ in starts]
    if numbers != list(range(1, len(numbers) + 1)) or numbers[-1:] != [run.status.get("generation")]:
        return Verdict("one generation at a time", False, f"generations started {numbers}, status says {run.status.get('generation')}")
    began = dict(starts)
    for line in run.steps:
        later = [n for n, t in starts if n > line["generation"] and t <= line["time"]]
        if later or line["time"] < began.get(line["generation"], float("inf")):
            return Verdict("one generation at a time", False, f"step {line['step']} of generation {line['generation']} at {line['time']:.3f}, generations started {starts}")
    return Verdict("one generation at a time", True, f"{len(numbers)} generations, each after the last ended")


def _faults_struck(plan: chaos_plan.Plan, run: History) -> Verdict:
    missed = [chaos_plan.fault_text(f) for f in plan.faults if due(plan, f) and not struck(plan, f, run)]
    return Verdict("faults struck", not missed, f"missed: {', '.join(missed)}" if missed else "every due fault struck")


def _rejected_only_damaged(plan: chaos_plan.Plan, run: History) -> Verdict:
    damaged = {f.step for f in plan.faults if f.kind == "corrupt-checkpoint"}
    rejected = run.status.get("rejectedCheckpoints", [])
    healthy = sorted(set(rejected) - damaged)
    return Verdict("rejected only damaged", not healthy, f"rejected {sorted(rejected)}" + (f", healthy: {healthy}" if healthy else ""))
