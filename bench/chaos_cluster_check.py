"""The invariants of a cluster chaos run, checked on what it recorded: every job's final
status, the faults that struck (with the restarts they must cost), the pod recorder's
generations, and what was left after the jobs were deleted. Verdicts are chaos_check's."""

from __future__ import annotations

import dataclasses
from typing import Any

from bench.chaos_check import Verdict
from bench.chaos_cluster_faults import Strike


@dataclasses.dataclass(frozen=True)
class Record:
    """What one run left: final statuses by job, the strikes, the generations seen at once,
    the pods and Services left after deleting the jobs, and the plan drawn twice."""

    statuses: dict[str, dict[str, Any]]
    strikes: list[Strike]
    overlaps: list[str]
    leftovers: list[str]
    replans_equal: bool
    #: (job, generation) of every rank pod the recorder saw; None: not recorded.
    generations: frozenset[tuple[str, int]] | None = None

    def to_json(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "generations": sorted(self.generations) if self.generations is not None else None}

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> Record:
        """A saved record (``record-SEED.json``), to be checked again."""
        pairs = lambda items: [tuple(i) for i in items]  # noqa: E731 - JSON keeps tuples as lists
        strikes = [Strike(**{**st, **{k: pairs(st.get(k, [])) for k in ("restarts", "disrupted", "damaged", "either")}}) for st in doc["strikes"]]
        seen = doc.get("generations")
        return cls(doc["statuses"], strikes, doc["overlaps"], doc["leftovers"], doc["replans_equal"],
                   frozenset(pairs(seen)) if seen is not None else None)


def check(run: Record, reference: dict[str, Any]) -> list[Verdict]:
    return [_outcome(run), _loss(run, reference), _restarts(run), _one_generation(run), _orphans(run),
            _rejected(run), Verdict("same seed, same plan", run.replans_equal)]


def _outcome(run: Record) -> Verdict:
    bad = {n: s.get("phase") for n, s in run.statuses.items() if s.get("phase") != "Complete"}
    return Verdict("outcome", not bad, f"not Complete: {bad}" if bad else f"{len(run.statuses)} jobs Complete")


def _loss(run: Record, reference: dict[str, Any]) -> Verdict:
    """Final step and loss equal the fault-free run's bit for bit (same world size)."""
    want = (reference.get("step"), reference.get("loss"))
    bad = {n: (s.get("step"), s.get("loss")) for n, s in run.statuses.items() if (s.get("step"), s.get("loss")) != want}
    return Verdict("loss", not bad, f"differ from {want!r}: {bad}" if bad else f"every job ends at {want!r}")


def expected_restarts(strikes: list[Strike]) -> dict[str, int]:
    """One restart per generation a fault ended (two faults in one generation cost one)."""
    ended = {pair for s in strikes if s.struck for pair in s.restarts}
    out: dict[str, int] = {}
    for job, _ in ended:
        out[job] = out.get(job, 0) + 1
    return out


def _restarts(run: Record) -> Verdict:
    """Restarts equal the failures that needed one; generations, those plus the disruptions.
    A generation a failure and a disruption both ended (a rank killed or hung while its node
    was lost), or a failure struck while one of its nodes was lost or just back, may count
    either way: the operator sees whichever comes first. A generation
    that never made a pod (the operator killed, or cut off from the API, between naming it
    in the status and creating its pods) is started again without a restart spent."""
    want = expected_restarts(run.strikes)
    # A disruption ends its generations whether or not the strike took as planned.
    disrupted = {pair for s in run.strikes for pair in s.disrupted}
    failed = {pair for s in run.strikes if s.struck for pair in s.restarts}
    ended = failed | disrupted
    got = {n: (s.get("restarts", 0), s.get("generation", 0)) for n, s in run.statuses.items()}
    never = set() if run.generations is None else {
        (n, g) for n, (_, last) in got.items() for g in range(1, last) if (n, g) not in run.generations and (n, g) not in ended}
    bad = {}
    both = (failed & disrupted) | {pair for s in run.strikes if s.struck for pair in s.either if pair in failed}
    for n in run.statuses:
        either = sum(job == n for job, _ in both)
        restarts = range(want.get(n, 0) - either, want.get(n, 0) + 1)
        generation = 1 + sum(job == n for job, _ in ended | never)
        if got[n][0] not in restarts or got[n][1] != generation:
            bad[n] = (got[n], (f"{restarts.start}..{restarts.stop - 1}" if either else restarts.start, generation))
    return Verdict("restarts", not bad, f"(restarts, generation) counted, needed: {bad}" if bad
                   else "(restarts, generation) as needed")


def _one_generation(run: Record) -> Verdict:
    return Verdict("one generation at a time", not run.overlaps, "; ".join(run.overlaps[:3]) or "no pod created while another generation's was alive")


def _orphans(run: Record) -> Verdict:
    return Verdict("no orphans", not run.leftovers, f"left: {run.leftovers}" if run.leftovers else "")


def _rejected(run: Record) -> Verdict:
    """A damaged checkpoint that a restart could load was rejected, and no healthy one was."""
    damaged = {pair for s in run.strikes if s.struck for pair in s.damaged}
    rejected = {(n, step) for n, s in run.statuses.items() for step in s.get("rejectedCheckpoints", [])}
    healthy = sorted(rejected - damaged)
    return Verdict("rejected only damaged", not healthy, f"rejected {sorted(rejected)}" + (f", healthy: {healthy}" if healthy else ""))


def struck(strike: Strike, statuses: dict[str, dict[str, Any]]) -> bool:
    """A damaged checkpoint struck only if a restart rejected it."""
    if strike.damaged:
        return strike.struck and all(step in statuses.get(job, {}).get("rejectedCheckpoints", []) for job, step in strike.damaged)
    return strike.struck
