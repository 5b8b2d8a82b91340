"""Straggler detection: which rank's own compute is slow, from every rank's section times.

Pure functions of rank 0's recent step timings (``Progress.timings``: per step, every rank's
compute seconds, wait seconds and sample count) and the policy. Nothing is remembered
between passes except what the reconcile core keeps in status (who is flagged, since when,
what was done), so a restarted operator decides the same way.

The signal is *per-sample compute* (data + forward + backward + optimizer, as busy time:
CPU time on CPU, device time on GPU; divided by the rank's samples that step): a rank that only waits in collectives is a victim, never a
straggler, and uneven work shares after rebalancing do not read as slowness.

- Relative score of rank r at step t: the reference divided by r's per-sample compute
  at t. The reference is the fastest rank's usual time *at the host's speed of the last
  ``minSteps`` steps*: a rank's *lag* at a step is its time over that step's fastest, and
  the reference is the lowest median lag of any rank over the ``window`` steps up to t
  (about 1) times the median of the steps' fastest times over the last ``minSteps``. The
  host's load moves every rank together, so it cancels in the lag, and the reference
  follows the host's drift within a few steps (a median of the window's times trails it by
  half a window: docs/stragglers.md). 1.0 is the fastest rank; ``threshold`` (0.75) means
  a third slower than the reference.
- A rank is flagged when its score is below ``threshold`` at each of ``minSteps``
  consecutive steps that together last at least ``minSeconds`` (on a busy host one process
  is slowed for bursts of a few hundred milliseconds; a straggler stays slow), and stays flagged until it is above the clearing level
  (``clear_level``: halfway between the threshold and 1) for ``minSteps`` consecutive
  steps: hysteresis, so a rank near the threshold does not flap.
- Fail-slow (individual) score: the rank's median lag over the older part of the window
  divided by its median lag over the last ``minSteps`` steps. Below 1 when the rank became
  slower during the run (a degrading device), about 1 for a rank that was always slow; the
  host getting slower does not lower it.
"""

from __future__ import annotations

import dataclasses
import statistics
from collections.abc import Sequence

from shardwright.operator.api import Reason, StragglerAction, StragglerPolicySpec, StragglerStatus

from .observed import StepTiming

#: Fewest steps of history before anything is judged (start-up steps are noisy).
MIN_HISTORY = 8
#: A victim waits at least this fraction of its step.
VICTIM_WAIT_FRACTION = 0.1


@dataclasses.dataclass(frozen=True)
class RankScore:
    rank: int
    #: Median relative score over the last ``minSteps`` steps (1.0 = the fastest rank).
    score: float
    #: Fail-slow score against the rank's own earlier steps (None: too little history).
    self_score: float | None
    #: True when the score went below the threshold for ``minSteps`` consecutive steps
    #: within the history and has not since been above the clearing level as long.
    below: bool
    #: True when it has been above the clearing level for ``minSteps`` consecutive steps.
    recovered: bool
    #: Step at which ``below`` began to hold (None when it does not hold).
    below_since: int | None
    #: Median seconds waiting on peers over the last ``minSteps`` steps.
    wait: float
    #: Median per-sample compute seconds over the last ``minSteps`` steps.
    per_sample: float


def clear_level(policy: StragglerPolicySpec) -> float:
    return policy.threshold + (1.0 - policy.threshold) / 2


def per_sample(timing: StepTiming) -> list[float]:
    """Busy (else wall) compute seconds per sample of every rank at one step."""
    compute = timing.busy or timing.compute
    return [c / max(n, 1) for c, n in zip(compute, timing.samples)]


def lags(x: Sequence[Sequence[float]]) -> list[list[float]]:
    """``x[i][r]``: rank r's compute per sample at step i. Each over its step's fastest: the
    host's speed at that step (load, clock, a checkpoint) divides out."""
    return [[v / fastest for v in row] if (fastest := min(row)) > 0 else [1.0] * len(row) for row in x]


def step_scores(x: Sequence[Sequence[float]], policy: StragglerPolicySpec) -> list[list[float] | None]:
    """``x[i][r]``: rank r's compute per sample at step i. Per step, every rank's score: the
    reference (module docstring) divided by the rank's own time; None for a disturbed step.
    Every rank slow at once (the host is busy, a checkpoint, a hiccup) says nothing about
    any one rank: such a step neither counts towards a flag nor against it."""
    y = lags(x)
    scores: list[list[float] | None] = []
    for i in range(len(x)):
        usual = min(statistics.median(col) for col in zip(*y[max(0, i - policy.window + 1) : i + 1]))
        reference = usual * statistics.median(min(row) for row in x[max(0, i - policy.min_steps + 1) : i + 1])
        disturbed = min(x[i]) * policy.threshold > reference
        scores.append(None if disturbed else [reference / v if v > 0 else 1.0 for v in x[i]])
    return scores


def assess(timings: Sequence[StepTiming], policy: StragglerPolicySpec) -> list[RankScore]:
    """Score every rank over the history; empty while there is too little of it."""
    world = len(timings[-1].compute) if timings else 0
    history = [t for t in timings if len(t.compute) == world]
    need = max(MIN_HISTORY, policy.min_steps + 1)
    if world < 2 or len(history) < need:
        return []
    x = [per_sample(t) for t in history]
    y = lags(x)
    scores = step_scores(x, policy)
    # A step's wall seconds: the longest compute plus wait of any rank.
    wall = [max(c + w for c, w in zip(t.compute, t.wait)) for t in history]
    k, first = policy.min_steps, need - 1  # judge only steps with enough history behind them
    judged = [s for s in scores[first - k + 1 :] if s is not None]
    if len(judged) < k:
        return []
    out = []
    for r in range(world):
        # Hysteresis as a state machine over the judged steps: flagged after k in a row
        # below the threshold, unflagged after k in a row at or above the clearing level.
        flagged, run_below, run_above, since, spent = False, 0, 0, None, 0.0
        for i in range(first - k + 1, len(scores)):
            if scores[i] is None:
                continue
            s = scores[i][r]
            run_below = run_below + 1 if s < policy.threshold else 0
            run_above = run_above + 1 if s >= clear_level(policy) else 0
            spent = spent + wall[i] if run_below else 0.0
            if not flagged and run_below >= k and spent >= policy.min_seconds:
                flagged, since = True, history[i].step
            elif flagged and run_above >= k:
                flagged, since = False, None
        recent = [y[i][r] for i in range(len(y) - k, len(y))]
        older = [y[i][r] for i in range(max(0, len(y) - policy.window), len(y) - k)]
        out.append(RankScore(
            rank=r,
            score=round(statistics.median(s[r] for s in judged[-k:]), 3),
            self_score=round(statistics.median(older) / statistics.median(recent), 3) if len(older) >= k else None,
            below=flagged,
            recovered=run_above >= k,
            below_since=since,
            wait=statistics.median(t.wait[r] for t in history[-k:]),
            per_sample=statistics.median(x[i][r] for i in range(len(x) - k, len(x))),
        ))
    return out


def victims(scores: Sequence[RankScore], flagged: set[int], timings: Sequence[StepTiming]) -> list[int]:
    """Unflagged ranks that spend a noticeable part of their steps waiting (on the flagged)."""
    if not timings:
        return []
    last = timings[-1]
    return [
        s.rank for s in scores
        if s.rank not in flagged and s.wait > VICTIM_WAIT_FRACTION * (last.compute[s.rank] + last.wait[s.rank])
    ]


def balanced_shares(scores: Sequence[RankScore], data: int, sequence: int) -> list[float]:
    """Work shares of the ``data`` data-parallel indexes in proportion to measured speed.

    A data-parallel index's speed is its slowest sequence-parallel rank's (they split the
    same samples); shares are normalised to a mean of 1 and rounded, so status stays stable.
    """
    by_rank = {s.rank: s.per_sample for s in scores}
    speeds = [1.0 / max(max(by_rank[d * sequence + s] for s in range(sequence)), 1e-12) for d in range(data)]
    mean = sum(speeds) / len(speeds)
    return [round(v / mean, 3) for v in speeds]


def shares_differ(new: Sequence[float], current: Sequence[float] | None, tolerance: float = 0.1) -> bool:
    """True when some share moves by more than ``tolerance`` (relative): a dead band."""
    old = list(current) if current else [1.0] * len(new)
    return len(old) != len(new) or any(abs(a - b) > tolerance * b for a, b in zip(new, old))


# ----------------------------------------------------------------------------- decisions


@dataclasses.dataclass(frozen=True)
class Notice:
    warning: bool
    reason: Reason
    message: str


@dataclasses.dataclass(frozen=True)
class Review:
    """What one pass decided: who is flagged now, what to tell, what to do."""

    flagged: list[StragglerStatus]
    notices: list[Notice] = dataclasses.field(default_factory=list)
    #: New work shares to apply (rebalance), or None.
    shares: list[float] | None = None
    #: The flagged rank to replace, or None.
    replace: StragglerStatus | None = None


def review(
    policy: StragglerPolicySpec,
    flagged_before: Sequence[StragglerStatus],
    shares_now: Sequence[float] | None,
    mitigated_step: int | None,
    timings: Sequence[StepTiming],
    step: int,
    *,
    data: int,
    sequence: int,
    nodes: dict[int, str | None],
) -> Review:
    """Flag, clear and mitigate, escalating as ``policy.action`` allows, never flapping:

    - a flag needs ``minSteps`` steps below the threshold, lifting it ``minSteps`` above
      the clearing level;
    - after a mitigation nothing else is done for ``window`` steps (the cool-down), so the
      next decision sees only steps run under the new shares;
    - ``rebalance`` sets shares in proportion to measured speed, again after a cool-down
      only if some share would move by more than 10% (a rank got slower, or recovered);
    - ``replace`` rebalances first; a rank still flagged when the cool-down ends is
      replaced.
    """
    scores = assess(timings, policy)
    if not scores:
        return Review(flagged=list(flagged_before))
    before = {f.rank: f for f in flagged_before}
    flagged: list[StragglerStatus] = []
    notices: list[Notice] = []
    waiting = victims(scores, {s.rank for s in scores if s.below} | set(before), timings)
    for sc in scores:
        old = before.get(sc.rank)
        if old is not None and sc.recovered:
            notices.append(Notice(False, Reason.STRAGGLER_CLEARED, f"Rank {sc.rank} is back to speed (score {sc.score:.2f} at step {step})"))
        elif old is not None:
            flagged.append(old.model_copy(update={"score": sc.score, "self_score": sc.self_score}))
        elif sc.below:
            flagged.append(StragglerStatus(
                rank=sc.rank, node=nodes.get(sc.rank), score=sc.score, since_step=sc.below_since or step,
                action=StragglerAction.REPORT, self_score=sc.self_score,
            ))
            who = f"; ranks {waiting} wait for it" if waiting else ""
            slowed = f", {1 / sc.self_score:.2f}x slower than its own earlier steps" if sc.self_score and sc.self_score < policy.threshold else ""
            notices.append(Notice(
                True, Reason.STRAGGLER_DETECTED,
                f"Rank {sc.rank} on {nodes.get(sc.rank) or 'unknown node'} is a straggler at step {sc.below_since or step}: "
                f"compute per sample {1 / sc.score:.2f}x the fastest rank's (score {sc.score:.2f}){slowed}{who}",
            ))
    result = Review(flagged=flagged, notices=notices)
    cooled = mitigated_step is None or step >= mitigated_step + policy.window
    if policy.action is StragglerAction.REPORT or not cooled or not (flagged or shares_now):
        return result
    by_rank = {s.rank: s for s in scores}
    if policy.action is StragglerAction.REPLACE:
        for f in flagged:
            if f.action is StragglerAction.REBALANCE and by_rank[f.rank].below:
                f.action = StragglerAction.REPLACE
                notices.append(Notice(
                    False, Reason.STRAGGLER_MITIGATED,
                    f"Rank {f.rank} is still slow {policy.window} steps after rebalancing (score {f.score:.2f}): "
                    f"the generation ends and the next one runs without it",
                ))
                return dataclasses.replace(result, replace=f)
    shares = balanced_shares(scores, data, sequence)
    if not shares_differ(shares, shares_now):
        return result
    for f in flagged:
        f.action = StragglerAction.REBALANCE
    notices.append(Notice(False, Reason.STRAGGLER_MITIGATED, f"Work shares of the data-parallel ranks set to {shares} at step {step}, in proportion to measured speed"))
    return dataclasses.replace(result, shares=shares)
