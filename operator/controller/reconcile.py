"""The reconcile core: (spec, plan, status, observed) -> actions and the new status.

Pure: no I/O, no clock, no Kopf, no Kubernetes client, no torch. Kopf handlers and the
local runner call it in a loop and carry out the actions. Each (re)start of the ranks is a
*generation* with one world size, plan and rendezvous; restart counts and terminal state
live on the job's status, so recreating children never resets them.

Reconcile is an ordered list of small steps; a step that settles the outcome returns True
and the rest are skipped. Starting and ending a generation live in ``generations``. Events
are emitted only on transitions, so calling reconcile again with the same inputs yields the
same status and no new events.
"""

from __future__ import annotations

import re

from shardwright.operator.api import (
    ConditionType,
    EventType,
    FailureAction,
    Phase,
    RankState,
    RankStatus,
    Reason,
    TrainingJobSpec,
    TrainingJobStatus,
)
from shardwright.operator.planner import Plan

from . import generations, stragglers
from .actions import Action, Event, ReplaceRank, Result, SetShares, StopGeneration
from .conditions import is_true, set_condition
from .observed import Observed, RankObservation, parse_time, rfc3339
from .render import JobRef

#: Jobs up to this many ranks list every rank in status; bigger ones only aggregate.
RANK_DETAIL_LIMIT = 16
#: The Suspended condition's message until every rank has stopped.
SUSPENDING = "Stopping the ranks at a step they all reach; they write a checkpoint there"


def reconcile(
    job: JobRef,
    spec: TrainingJobSpec,
    plan: Plan | None,
    status: TrainingJobStatus | None,
    observed: Observed,
) -> Result:
    """One reconcile pass. ``plan`` is the plan for the capacity available now (the caller
    plans); None when not even the elastic minimum fits, and nothing can start."""
    return _Reconcile(job, spec, plan, status, observed).run()


class _Reconcile:
    def __init__(self, job, spec, plan, status, observed) -> None:
        self.job: JobRef = job
        self.spec: TrainingJobSpec = spec
        self.plan: Plan = plan
        self.status = status.model_copy(deep=True) if status else TrainingJobStatus()
        self.seen: Observed = observed
        self.now = rfc3339(observed.now)
        self.actions: list[Action] = []
        self.requeue_after: float | None = None

    def run(self) -> Result:
        self.observe_progress()
        for step in (
            self.ensure_created,
            self.ensure_terminal_quiet,
            self.ensure_deadline,
            self.ensure_suspended,
            self.ensure_stale_stopped,
            self.ensure_resized,
            self.ensure_placement_current,
            self.ensure_stragglers_handled,
            self.ensure_generation_started,
            self.ensure_generation_outcome,
        ):
            if step():
                break
        self.summarize_ranks()
        if self.runs_current_spec():
            self.status.observed_generation = self.job.object_generation
        return Result(tuple(self.actions), self.status, self.requeue_after)

    def runs_current_spec(self) -> bool:
        """``observedGeneration`` means "this spec is what runs". Every field a running
        generation may take while it runs is applied by the operator at once (policies,
        suspend, deadlines); a new world size (replicas, elastic bounds) only runs once a
        generation of that size starts, so until then the older generation stays observed."""
        st = self.status
        if st.phase not in (Phase.PENDING, Phase.RUNNING, Phase.RESTARTING) or self.plan is None or not st.generation:
            return True
        return st.world_size == self.plan.world_size

    # ------------------------------------------------------------------ steps

    def ensure_created(self) -> bool:
        if self.status.start_time is None:
            self.status.start_time = self.now
            self.condition(ConditionType.CREATED, True, Reason.CREATED, "Job accepted")
            planned = self.plan.summary if self.plan else "waiting for capacity"
            self.event(EventType.NORMAL, Reason.CREATED, f"Accepted: {planned}")
        return False

    def ensure_terminal_quiet(self) -> bool:
        """Once Complete or Failed, never start anything again; stop whatever still runs."""
        if not self.status.phase.terminal:
            return False
        self.stop_alive(lambda r: True, Reason.STOPPED)
        return True

    def ensure_deadline(self) -> bool:
        limit = self.spec.active_deadline_seconds
        if limit is None:
            return False
        elapsed = (self.seen.now - parse_time(self.status.start_time)).total_seconds()
        if elapsed < limit:
            self.requeue(limit - elapsed)
            return False
        self.fail(Reason.DEADLINE_EXCEEDED, f"Ran longer than activeDeadlineSeconds={limit}")
        return True

    def ensure_suspended(self) -> bool:
        st = self.status
        if not self.spec.suspend:
            # The Suspended condition marks the first pass after resume: the ranks may take
            # several passes to stop, and the event must be emitted once.
            if st.phase is Phase.SUSPENDED and is_true(st.conditions, ConditionType.SUSPENDED):
                self.condition(ConditionType.SUSPENDED, False, Reason.RESUMED, "Resumed")
                self.event(EventType.NORMAL, Reason.RESUMED, "Resuming from the last checkpoint")
            return False
        if st.phase is not Phase.SUSPENDED:
            st.phase = Phase.SUSPENDED
            st.next_start_time = None
            self.condition(ConditionType.SUSPENDED, True, Reason.SUSPENDED, SUSPENDING)
            self.condition(ConditionType.RUNNING, False, Reason.SUSPENDED, "Suspended")
            if any(r.alive for r in self.seen.ranks):
                self.event(EventType.NORMAL, Reason.SUSPENDED, f"Suspending: the ranks stop at the next step they all reach (step {st.step} seen last) and write a checkpoint")
        if self.stop_alive(lambda r: True, Reason.SUSPENDED, graceful=True):
            return True
        # The ranks agree on their last step only as they stop: say which once they have.
        if next(c for c in st.conditions if c.type == ConditionType.SUSPENDED).message == SUSPENDING:
            latest = self.seen.latest_checkpoint
            kept = f"checkpoint of step {latest.step} kept" if latest else "no checkpoint"
            self.condition(ConditionType.SUSPENDED, True, Reason.SUSPENDED, f"Ranks stopped at step {st.step}; {kept}")
            self.event(EventType.NORMAL, Reason.SUSPENDED, f"Suspended at step {st.step}; {kept}")
        return True

    def ensure_stale_stopped(self) -> bool:
        """Gang semantics: ranks of an older generation are gone before a new one starts."""
        return self.stop_alive(lambda r: r.generation != self.status.generation, Reason.STOPPED)

    def ensure_resized(self) -> bool:
        """Capacity changed under a running generation: checkpoint, stop, restart resized.

        A generation that lost a rank fails on its own; this handles the planned case (the
        rank budget or the ready nodes changed) without spending the restart budget.
        """
        st = self.status
        if st.phase is not Phase.RUNNING or self.plan is None or self.plan.world_size == st.world_size:
            return False
        if not all(r.alive for r in self.seen.of_generation(st.generation)):
            return False  # a rank is gone: that is a failure, handled with the outcome
        st.phase = Phase.RESTARTING
        message = f"World size {st.world_size} -> {self.plan.world_size} at the next step boundary"
        self.condition(ConditionType.RESTARTING, True, Reason.RESIZING, message)
        self.event(EventType.NORMAL, Reason.RESIZING, message)
        self.stop_alive(lambda r: r.generation == st.generation, Reason.RESIZING, graceful=True)
        return True

    def ensure_placement_current(self) -> bool:
        """Ranks of a generation not yet running wait for a placement that no longer holds
        (a node the job kept off was readmitted): start it again now, like a resize,
        without spending the restart budget: nothing failed, and nothing ran."""
        st = self.status
        why = self.seen.stale_placement.get(st.generation)
        if st.phase is not Phase.PENDING or why is None:
            return False
        st.phase = Phase.RESTARTING
        message = f"Generation {st.generation} starts again: {why}"
        self.condition(ConditionType.RESTARTING, True, Reason.NODE_READMITTED, message)
        self.event(EventType.NORMAL, Reason.NODE_READMITTED, message)
        self.stop_alive(lambda r: r.generation == st.generation, Reason.NODE_READMITTED)
        return True

    def ensure_stragglers_handled(self) -> bool:
        """A rank whose own compute is slow: report it, shift work from it, or replace it
        (``stragglerPolicy``; the decisions are in ``stragglers.review``)."""
        st, p = self.status, self.seen.progress
        ranks = self.seen.of_generation(st.generation)
        if st.phase is not Phase.RUNNING or p is None or p.generation != st.generation or not all(r.alive for r in ranks):
            return False
        policy = self.spec.straggler_policy
        had = [(f.rank, f.action) for f in st.stragglers]
        # The plan for the capacity now is the running generation's while the size matches.
        same = self.plan is not None and self.plan.world_size == st.world_size
        sequence = self.plan.dims.sequence if same else self.spec.parallelism.sequence.degree
        got = stragglers.review(
            policy, st.stragglers, st.data_shares, st.straggler_mitigated_step, p.timings, p.step,
            data=st.world_size // sequence, sequence=sequence, nodes={r.rank: r.node for r in ranks},
        )
        st.stragglers = got.flagged
        for notice in got.notices:
            self.event(EventType.WARNING if notice.warning else EventType.NORMAL, notice.reason, notice.message)
        if got.shares is not None:
            st.data_shares, st.straggler_mitigated_step = got.shares, p.step
        if st.data_shares and (p.data_shares is None or list(p.data_shares) != st.data_shares):
            self.actions.append(SetShares(st.generation, tuple(st.data_shares)))  # until rank 0 reports them
        if got.replace is not None:
            message = f"Rank {got.replace.rank} replaced: generation {st.generation} ends at the next step boundary"
            st.phase, st.straggler_mitigated_step = Phase.RESTARTING, p.step
            self.condition(ConditionType.DEGRADED, False, Reason.STRAGGLER_MITIGATED, message)
            self.condition(ConditionType.RESTARTING, True, Reason.STRAGGLER_MITIGATED, message)
            self.actions.append(ReplaceRank(st.generation, got.replace.rank, got.replace.node))
            self.stop_alive(lambda r: r.generation == st.generation, Reason.STRAGGLER_MITIGATED, graceful=True)
            return True
        if [(f.rank, f.action) for f in st.stragglers] != had:
            if st.stragglers:
                what = ", ".join(f"rank {f.rank} (score {f.score:.2f}, {f.action})" for f in st.stragglers)
                self.condition(ConditionType.DEGRADED, True, Reason.STRAGGLER_DETECTED, f"Stragglers: {what}")
            else:
                self.condition(ConditionType.DEGRADED, False, Reason.STRAGGLER_CLEARED, "No straggler")
        return False

    def ensure_generation_started(self) -> bool:
        return generations.ensure_started(self)  # the start itself: generations.py

    def ensure_generation_outcome(self) -> bool:
        st = self.status
        ranks = self.seen.of_generation(st.generation)
        failed = [r for r in ranks if r.state is RankState.FAILED]
        if failed:
            first = next((r for r in failed if r.died), failed[0])
            code = f" (exit code {first.exit_code})" if first.exit_code is not None else ""
            message = f"Rank {first.rank} failed{code}: {first.message}".rstrip(": ")
            # A disruption, or a generation that only ever waited for room, is not the
            # job's failure: restart without spending the budget (failure rules still apply).
            # Nor is a failure beside a rank being evicted or on a lost node: its peers' own
            # collectives and rendezvous time out first (cluster chaos seed 1300).
            disrupted = [r for r in ranks if r.disrupted or (r.alive and r.node_lost)]
            spend = not (first.disrupted or disrupted or all(r.reason == "PodsReadyTimeout" and "Unschedulable" in r.message for r in failed))
            if disrupted and not first.disrupted:
                message += f"; rank {disrupted[0].rank} was " + ("on a NotReady node" if disrupted[0].node_lost else "being evicted")
            generations.restart_or_fail(self, first.reason or Reason.RANK_FAILED, message, decide(self.spec, failed), spend=spend)
        elif not ranks:
            # A generation just started may not be visible yet (a lagging cache): only
            # ranks that were running and vanished count as lost.
            if st.phase is Phase.RUNNING:
                generations.restart_or_fail(self, Reason.RANKS_LOST, f"Every rank of generation {st.generation} is gone")
        elif len(ranks) == st.world_size and all(r.state is RankState.SUCCEEDED for r in ranks):
            self.complete()
        elif (stalled := self.stalled_seconds()) is not None:
            computing = [r.rank for r in ranks if r.activity == "hung" or r.activity == "computing"]
            who = f"; ranks not waiting in a collective: {computing}" if computing else ""
            # Ranks on a lost node may have gone on unseen (their reports and their end
            # unreachable, cluster chaos seed 1101): the node's disruption, not a hang.
            if lost := [r for r in ranks if r.node_lost]:
                who += "; " + ", ".join(f"rank {r.rank}'s node {r.node}" for r in lost) + " NotReady or gone"
            generations.restart_or_fail(self, Reason.NO_PROGRESS, f"No step completed for {stalled:.0f}s (step {st.step}){who}", spend=not lost)
        elif len(ranks) == st.world_size and all(r.state is RankState.RUNNING for r in ranks):
            if st.phase is not Phase.RUNNING:
                st.phase = Phase.RUNNING
                self.condition(ConditionType.RUNNING, True, Reason.RANKS_RUNNING, f"{len(ranks)} ranks running")
                self.condition(ConditionType.RESTARTING, False, Reason.RANKS_RUNNING, "Running")
        elif waiting := [r for r in ranks if r.state is RankState.PENDING and r.reason]:
            # Say why ranks are not up yet (image pulls, scheduling) instead of "starting".
            first = waiting[0]
            self.condition(ConditionType.RUNNING, False, first.reason, f"Rank {first.rank}: {first.message}")
        return True

    # ------------------------------------------------------------------ transitions

    def complete(self) -> None:
        st = self.status
        st.phase = Phase.COMPLETE
        st.completion_time = self.now
        st.step = max(st.step, self.spec.training.steps)
        self.condition(ConditionType.RUNNING, False, Reason.TRAINING_COMPLETE, "Finished")
        self.condition(ConditionType.COMPLETE, True, Reason.TRAINING_COMPLETE, f"Trained {self.spec.training.steps} steps")
        self.event(EventType.NORMAL, Reason.TRAINING_COMPLETE, f"Trained {self.spec.training.steps} steps")
        self.stop_alive(lambda r: True, Reason.TRAINING_COMPLETE)

    def fail(self, reason: Reason, message: str) -> None:
        st = self.status
        st.phase = Phase.FAILED
        st.completion_time = self.now
        st.next_start_time = None
        self.condition(ConditionType.RUNNING, False, reason, message)
        self.condition(ConditionType.RESTARTING, False, reason, message)
        self.condition(ConditionType.FAILED, True, reason, message)
        self.event(EventType.WARNING, reason, message)
        self.stop_alive(lambda r: True, reason)

    # ------------------------------------------------------------------ helpers

    def stop_alive(self, which, reason: Reason, *, graceful: bool = False) -> bool:
        """Ask the backend to stop every generation that has a live rank matching ``which``."""
        generations = sorted({r.generation for r in self.seen.ranks if r.alive and which(r)})
        for gen in generations:
            if not any(isinstance(a, StopGeneration) and a.generation == gen for a in self.actions):
                self.actions.append(StopGeneration(gen, graceful, reason))
        return bool(generations)

    def stalled_seconds(self) -> float | None:
        """Seconds since the step last advanced, when past the progress deadline."""
        since = self.status.last_progress_time
        if since is None:
            return None
        stalled = (self.seen.now - parse_time(since)).total_seconds()
        limit = self.spec.failure_policy.progress_deadline_seconds
        if stalled <= limit:
            self.requeue(limit - stalled)
            return None
        return stalled

    def observe_progress(self) -> None:
        """Fold rank 0's report into status: step, loss, throughput, damaged checkpoints."""
        st = self.status
        if (ckpt := self.seen.latest_checkpoint) is not None:
            st.last_checkpoint = ckpt
        p = self.seen.progress
        if p is None or p.generation != st.generation:
            return
        # A generation reports the loss of the checkpoint it resumed from until it trains a
        # step, and no throughput: one resumed at the last step seen keeps that step's rate,
        # one resumed past it (its last steps went unseen, cluster chaos seed 1101) has no
        # older step's figures (nor a loss, from a checkpoint that does not record it).
        if p.loss is not None or p.step != st.step:
            st.loss = p.loss
        if p.tokens_per_second is not None or p.step != st.step:
            st.tokens_per_second = p.tokens_per_second
        if p.step != st.step or st.last_progress_time is None:
            st.last_progress_time = self.now
        st.step = p.step
        if p.evaluation is not None:  # a new generation keeps the last one until it evaluates
            st.evaluation = p.evaluation
        for step, why in p.rejected:
            if step not in st.rejected_checkpoints:
                st.rejected_checkpoints.append(step)
                self.event(
                    EventType.WARNING, Reason.CHECKPOINT_REJECTED,
                    f"Checkpoint of step {step} is damaged ({why}); generation {p.generation} resumed from step {p.resumed_from} instead",
                )

    def summarize_ranks(self) -> None:
        st = self.status
        ranks = {r.rank: r for r in self.seen.of_generation(st.generation)}
        st.ready_ranks = sum(r.state is RankState.RUNNING for r in ranks.values())
        starting = st.phase is Phase.PENDING and st.generation > 0
        if st.world_size > RANK_DETAIL_LIMIT or not (ranks or starting):
            return
        # A starting generation lists every rank: those the backend does not show yet (just
        # started, or a cache catching up one pod at a time) are Pending too, so the status
        # does not change, and is not written again, as each one appears.
        times = self.seen.progress.step_seconds if self.seen.progress else ()
        numbers = range(st.world_size) if starting else sorted(ranks)
        st.ranks = [
            RankStatus(
                rank=i, state=r.state, node=r.node, message=r.message or None,
                step_seconds=times[i] if i < len(times) else None,
            ) if (r := ranks.get(i)) is not None else RankStatus(rank=i, state=RankState.PENDING)
            for i in numbers
        ]

    def condition(self, type_: ConditionType, value: bool, reason: str, message: str) -> None:
        self.status.conditions = set_condition(
            self.status.conditions, type_, value, reason, message,
            now=self.now, observed_generation=self.job.object_generation,
        )

    def event(self, type_: EventType, reason: str, message: str) -> None:
        self.actions.append(Event(type_, reason, message))

    def requeue(self, seconds: float) -> None:
        self.requeue_after = seconds if self.requeue_after is None else min(self.requeue_after, seconds)


def decide(spec: TrainingJobSpec, failed: list[RankObservation]) -> FailureAction:
    """The first failure rule matching any failed rank decides; Retry when none matches."""
    for rule in spec.failure_policy.rules:
        for rank in failed:
            codes_match = not rule.exit_codes or rank.exit_code in rule.exit_codes
            text_match = rule.message is None or re.search(rule.message, rank.message)
            if codes_match and text_match:
                return rule.action
    return FailureAction.RETRY
