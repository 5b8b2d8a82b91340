"""The generation steps of a reconcile pass: start the next generation (resuming from the
newest usable checkpoint), wait for capacity, and end one with a restart or a failure.

A *generation* is one start of the ranks with one world size, plan and rendezvous. These
functions work on the pass's copy of the status and its action list (``rc``), as the
steps in ``reconcile`` do; they are split out to keep that module readable.
"""

from __future__ import annotations

import datetime
from typing import TYPE_CHECKING

from shardwright.operator.api import ConditionType, EventType, FailureAction, Phase, Reason

from .actions import StartGeneration
from .conditions import is_true
from .observed import parse_time, rfc3339
from .render import worker_config

if TYPE_CHECKING:
    from .reconcile import _Reconcile as Pass


def ensure_started(rc: Pass) -> bool:
    """Start the next generation once the previous one is gone, its backoff passed and
    the plan fits; settles the pass whenever a start is due."""
    st = rc.status
    needs_start = st.generation == 0 or st.phase in (Phase.RESTARTING, Phase.SUSPENDED)
    if not needs_start:
        return False
    if any(r.alive for r in rc.seen.of_generation(st.generation)):
        # The previous generation is still shutting down. A restart stopped the ranks it
        # saw; one a lagging pod cache shows only now is stopped too, or it is waited for forever.
        if st.phase is Phase.RESTARTING:
            rc.stop_alive(lambda r: r.generation == st.generation, Reason.STOPPED)
        return True
    if st.next_start_time is not None:
        wait = (parse_time(st.next_start_time) - rc.seen.now).total_seconds()
        if wait > 0:
            rc.requeue(wait)
            return True
    if rc.plan is None:
        wait_for_capacity(rc)
        return True
    if rc.seen.blocked:
        rc.condition(ConditionType.RUNNING, False, Reason.PREVIOUS_JOB_TERMINATING, rc.seen.blocked)
        return True
    start(rc)
    return True


def start(rc: Pass) -> None:
    """Generation N+1 at the plan's size, resuming from the newest checkpoint not rejected."""
    st = rc.status
    usable = [c for c in rc.seen.checkpoints if c.step not in st.rejected_checkpoints]
    resume = usable[-1] if usable else None
    st.generation += 1
    st.world_size = rc.plan.world_size
    st.replicas = len({(r.group, r.replica) for r in rc.plan.ranks})  # its pods: the /scale status
    st.plan = rc.plan.summary
    st.generation_start_time = rc.now
    st.last_progress_time = None  # set when the new ranks first report
    st.next_start_time = None
    # Pending until every rank of the new generation runs; staying Restarting or
    # Suspended would make the next reconcile start yet another generation.
    st.phase = Phase.PENDING
    # Straggler state names ranks of the old generation; the new one is judged afresh.
    st.stragglers, st.data_shares, st.straggler_mitigated_step = [], None, None
    if is_true(st.conditions, ConditionType.DEGRADED):
        rc.condition(ConditionType.DEGRADED, False, Reason.STRAGGLER_CLEARED, f"Generation {st.generation} starts afresh")
    config = worker_config(rc.job, rc.spec, rc.plan, st.generation, resume)
    rc.actions.append(StartGeneration(st.generation, rc.plan, config))
    if resume is not None and resume.world_size != rc.plan.world_size:
        rc.event(
            EventType.NORMAL, Reason.RESHARDED,
            f"Checkpoint of step {resume.step} written at world size {resume.world_size} ({resume.layout}) "
            f"loads at {rc.plan.world_size} ({rc.plan.dims.layout})",
        )
    # On Kubernetes the ranks load the newest checkpoint the job committed to storage,
    # which may be newer than the operator knows (rank 0 killed before it was polled, or
    # its probes blocked): the event says so rather than "from scratch".
    newest = " or a newer checkpoint of this job in storage" if rc.job.resume_newest else ""
    if st.generation > 1 and resume is not None:
        rc.event(
            EventType.NORMAL,
            Reason.RESTARTED_FROM_CHECKPOINT,
            f"Generation {st.generation} ({rc.plan.summary}) resumes from step {resume.step}{newest}",
        )
    elif st.generation > 1 and newest:
        rc.event(
            EventType.NORMAL, Reason.RESTARTED_FROM_CHECKPOINT,
            f"Generation {st.generation} ({rc.plan.summary}) resumes from the newest checkpoint of this job in "
            "storage (none known to the operator), else from scratch",
        )
    else:
        where = f"from step {resume.step}" if resume else "from scratch"
        rc.event(EventType.NORMAL, Reason.GENERATION_STARTED, f"Generation {st.generation} ({rc.plan.summary}) starts {where}")


def wait_for_capacity(rc: Pass) -> None:
    """Not even the elastic minimum fits: say so (the Warning once)."""
    message = f"Not enough ranks available for {rc.spec.world_size} (or the elastic minimum)"
    if not any(c.reason == Reason.INSUFFICIENT_CAPACITY for c in rc.status.conditions):
        rc.event(EventType.WARNING, Reason.INSUFFICIENT_CAPACITY, message)
    rc.condition(ConditionType.RUNNING, False, Reason.INSUFFICIENT_CAPACITY, message)


def restart_or_fail(rc: Pass, reason: str, message: str, action: FailureAction = FailureAction.RETRY, *, spend: bool = True) -> None:
    """End the current generation; restart it from the last checkpoint or fail the job.
    ``spend``: the restart counts against ``maxRestarts`` (not for a disruption)."""
    st = rc.status
    latest = rc.seen.latest_checkpoint
    st.steps_lost += max(st.step - (latest.step if latest else 0), 0)
    # The step comes from the last poll of rank 0: the rank may have gone further.
    kept = f"the last checkpoint is of step {latest.step}" if latest else "no checkpoint yet"
    message = f"{message}; step {st.step} seen last, {kept}"
    rc.stop_alive(lambda r: r.generation == st.generation, reason)
    rc.event(EventType.WARNING, reason, message)
    if action is FailureAction.FAIL:
        rc.fail(Reason.FAILED_BY_RULE, f"{message}; a failure rule says Fail")
        return
    limit = rc.spec.failure_policy.max_restarts
    if spend and st.restarts >= limit:
        rc.fail(Reason.BACKOFF_LIMIT_EXCEEDED, f"{message}; restart budget of {limit} used up")
        return
    if spend:
        st.restarts += 1
    st.phase = Phase.RESTARTING
    delay = rc.spec.failure_policy.backoff.delay(st.restarts)
    st.next_start_time = rfc3339(rc.seen.now + datetime.timedelta(seconds=delay))
    rc.requeue(delay)
    rc.condition(ConditionType.RUNNING, False, reason, message)
    counted = f"Restart {st.restarts}/{limit}" if spend else f"Restart (budget unspent, {st.restarts}/{limit} used)"
    rc.condition(ConditionType.RESTARTING, True, reason, f"{counted} in {delay:g}s: {message}")
