"""The TrainingJob state machine: start, run, fail and restart, give up, suspend, finish.

Everything is driven through ``reconcile`` with hand-built observations and a fake clock;
each test reads like the life of one job.
"""

from __future__ import annotations

import datetime

from shardwright.operator.api import Phase, RankState, Reason
from shardwright.operator.controller import (
    Event, Observed, Progress, RankObservation, StartGeneration, StopGeneration, reconcile,
)

from .driver import JOB, T0, Driver, checkpoint, condition, ranks, reasons, running, spec

F, R, S = RankState.FAILED, RankState.RUNNING, RankState.SUCCEEDED


def fail_rank0(gen: int, code: int = 1, message: str = "boom") -> tuple:
    """Rank 0 of ``gen`` exited with ``code``; rank 1 is still running."""
    return ranks(gen, F, exit_code=code, message=message) + (RankObservation(gen, 1, R),)


class TestHappyPath:
    """Pending -> Running -> Complete, with the generation-1 start as one gang action."""

    def test_first_reconcile_starts_generation_one(self):
        d = Driver()
        result = d.tick()
        (start,) = result.of_type(StartGeneration)
        assert start.generation == 1 and start.plan.world_size == 2
        assert start.config.checkpoint.resume_from is None
        assert start.config.job == "tiny-train" and start.config.parallel.data == 2
        assert result.status.phase is Phase.PENDING
        assert reasons(result) == [Reason.CREATED, Reason.GENERATION_STARTED]
        assert result.status.start_time == "2025-03-01T12:00:00Z"

    def test_pending_until_every_rank_runs(self):
        d = Driver()
        d.tick()
        assert d.tick(1, ranks(1, R, RankState.PENDING)).status.phase is Phase.PENDING
        assert d.tick(2, ranks(1, R)).status.phase is Phase.PENDING  # one of two seen
        result = d.tick(3, running(1))
        assert result.status.phase is Phase.RUNNING and result.status.ready_ranks == 2
        assert condition(result.status, "Running").status == "True"

    def test_a_starting_generation_lists_every_rank_as_pending_until_seen(self):
        """The start pass and the passes that see the ranks appear one by one produce the
        same status, so a handler writes it once (the ranks only change when they do)."""
        d = Driver()
        first = d.tick().status
        assert [(r.rank, r.state) for r in first.ranks] == [(0, RankState.PENDING), (1, RankState.PENDING)]
        assert d.tick(1, ranks(1, RankState.PENDING)).status == first
        assert d.tick(2, ranks(1, RankState.PENDING, RankState.PENDING)).status == first
        assert [r.state for r in d.tick(3, ranks(1, R)).status.ranks] == [R, RankState.PENDING]

    def test_a_generation_not_yet_visible_is_not_lost(self):
        """Right after a start, the backend's cache may not list the ranks yet."""
        d = Driver()
        d.tick()
        result = d.tick(1)
        assert result.status.phase is Phase.PENDING and result.status.restarts == 0
        assert result.actions == ()

    def test_complete_when_every_rank_succeeds(self):
        d = Driver()
        d.start()
        result = d.tick(60, ranks(1, S, S))
        assert result.status.phase is Phase.COMPLETE
        assert result.status.step == 120 and result.status.completion_time == "2025-03-01T12:01:00Z"
        assert condition(result.status, "Complete").reason == Reason.TRAINING_COMPLETE
        assert reasons(result) == [Reason.TRAINING_COMPLETE]
        again = d.tick(61, ranks(1, S, S))
        assert again.actions == () and again.status.phase is Phase.COMPLETE


def resumed_after_a_failure(seen: int, at: int, loss: float | None = None):
    """Generation 1 seen last at step ``seen`` (loss 1.5) fails; generation 2 resumes at step
    ``at`` and has trained no step yet, reporting ``loss`` (its checkpoint's, where the
    manifest has one). The driver and generation 2's first status."""
    d = Driver()
    d.start()
    d.tick(5, running(1), Progress(generation=1, step=seen, loss=1.5, tokens_per_second=100.0))
    d.tick(10, fail_rank0(1), Progress(generation=1, step=seen, loss=1.5, tokens_per_second=100.0))
    d.tick(20, ranks(1, F, F))
    d.tick(21)
    return d, d.tick(22, running(2), Progress(generation=2, step=at, loss=loss, resumed_from=at)).status


class TestRestart:
    """A failed rank ends the generation; the next one starts after backoff, from a checkpoint."""

    def test_rank_failure_restarts_with_backoff_from_the_latest_checkpoint(self):
        d = Driver(spec(failurePolicy={"backoff": {"initialSeconds": 4, "factor": 2}}))
        d.start()
        ckpts = (checkpoint(40), checkpoint(80))
        failed = d.tick(10, fail_rank0(1), checkpoints=ckpts)
        st = failed.status
        assert st.phase is Phase.RESTARTING and st.restarts == 1
        assert st.next_start_time == "2025-03-01T12:00:14Z" and failed.requeue_after == 4
        assert failed.of_type(StopGeneration) == [StopGeneration(1, False, Reason.RANK_FAILED)]
        assert Reason.RANK_FAILED in reasons(failed)
        assert condition(st, "Restarting").status == "True"

        dead = ranks(1, F, F, exit_code=1)
        waiting = d.tick(13, dead, checkpoints=ckpts)
        assert waiting.of_type(StartGeneration) == [] and waiting.requeue_after == 1

        restarted = d.tick(14, dead, checkpoints=ckpts)
        (start,) = restarted.of_type(StartGeneration)
        assert start.generation == 2
        assert start.config.checkpoint.resume_from == "/ckpt/tiny-train/step-00000080"
        assert reasons(restarted) == [Reason.RESTARTED_FROM_CHECKPOINT]
        assert restarted.status.generation_start_time == "2025-03-01T12:00:14Z"

    def test_failure_event_says_the_last_step_seen_and_the_checkpoint_kept(self):
        """The step is rank 0's last report, not a count of what is lost (that read "at
        least 0 steps are lost" for a kill right after the poll that saw a checkpoint)."""
        d = Driver()
        d.start()
        d.tick(5, running(1), Progress(generation=1, step=40))
        (failed,) = d.tick(6, fail_rank0(1), Progress(generation=1, step=40), (checkpoint(40),)).of_type(Event)
        assert failed.message == "Rank 0 failed (exit code 1): boom; step 40 seen last, the last checkpoint is of step 40"
        d = Driver()
        d.start()
        (failed,) = d.tick(6, fail_rank0(1), Progress(generation=1, step=30)).of_type(Event)
        assert failed.message.endswith("; step 30 seen last, no checkpoint yet")

    def test_a_generation_that_trains_no_step_keeps_the_last_loss(self):
        """Evicted after its last checkpoint, a job's next generation resumes at its last step
        and trains none (cluster chaos, seed 1000): the loss the job reached stays in status."""
        d, resumed = resumed_after_a_failure(seen=40, at=40)
        assert (resumed.generation, resumed.step, resumed.loss, resumed.tokens_per_second) == (2, 40, 1.5, 100.0)
        trained = d.tick(23, running(2), Progress(generation=2, step=41, loss=1.4, tokens_per_second=90.0)).status
        assert (trained.step, trained.loss, trained.tokens_per_second) == (41, 1.4, 90.0)

    def test_a_generation_resumed_past_the_last_step_seen_reports_no_stale_loss(self):
        """Its predecessor's last steps went unseen (leader changes, a NotReady node: cluster
        chaos seed 1101): the loss of the last step seen is not the resumed step's."""
        _, resumed = resumed_after_a_failure(seen=34, at=40)
        assert (resumed.generation, resumed.step, resumed.loss, resumed.tokens_per_second) == (2, 40, None, None)

    def test_a_generation_resumed_past_the_last_step_seen_reports_its_checkpoints_loss(self):
        """The manifest keeps its step's loss: the status shows it, and no older rate."""
        _, resumed = resumed_after_a_failure(seen=34, at=40, loss=1.25)
        assert (resumed.generation, resumed.step, resumed.loss, resumed.tokens_per_second) == (2, 40, 1.25, None)
        _, same = resumed_after_a_failure(seen=40, at=40, loss=1.5)
        assert (same.step, same.loss, same.tokens_per_second) == (40, 1.5, 100.0)

    def test_the_new_generation_becomes_running_and_is_started_once(self):
        d = Driver()
        d.start()
        d.tick(10, fail_rank0(1))
        d.tick(20, ranks(1, F, F))
        assert d.tick(21).status.phase is Phase.PENDING  # generation 2 not visible yet
        result = d.tick(22, running(2))
        assert result.status.phase is Phase.RUNNING and result.status.generation == 2
        assert condition(result.status, "Restarting").status == "False"
        assert [s.generation for s in d.starts()] == [1, 2]

    def test_backoff_grows_with_each_restart(self):
        d = Driver(spec(failurePolicy={"maxRestarts": 5, "backoff": {"initialSeconds": 2, "factor": 3, "maxSeconds": 10}}))
        d.start()
        delays, clock = [], 10
        for gen in (1, 2, 3):
            result = d.tick(clock, fail_rank0(gen))
            delays.append(result.requeue_after)
            clock += 100
            d.tick(clock, ranks(gen, F, F))
            d.tick(clock + 1, running(gen + 1))
        assert delays == [2, 6, 10]
        assert d.status.restarts == 3

    def test_stale_generation_is_stopped_before_the_next_starts(self):
        """Gang semantics: a rank of generation 1 still alive blocks generation 2."""
        d = Driver()
        d.start()
        d.tick(10, fail_rank0(1))
        stuck = ranks(1, F, R)
        result = d.tick(100, stuck)
        assert result.of_type(StartGeneration) == []
        result = d.tick(101, ranks(1, F, F))
        assert [s.generation for s in result.of_type(StartGeneration)] == [2]
        # A straggling generation-1 rank seen while generation 2 runs is stopped.
        result = d.tick(102, running(2) + ranks(1, R))
        assert result.of_type(StopGeneration) == [StopGeneration(1, False, Reason.STOPPED)]
        assert result.of_type(StartGeneration) == []

    def test_losing_every_rank_counts_as_a_failure(self):
        d = Driver()
        d.start()
        result = d.tick(10)
        assert result.status.phase is Phase.RESTARTING and result.status.restarts == 1
        assert reasons(result) == [Reason.RANKS_LOST]
        assert condition(result.status, "Restarting").reason == Reason.RANKS_LOST


class TestGivingUp:
    """Terminal failures: restart budget, failure rules, deadline; never a start afterwards."""

    def test_restart_budget_exhausted_fails_for_good(self):
        d = Driver(spec(failurePolicy={"maxRestarts": 2, "backoff": {"initialSeconds": 0}}))
        d.start()
        for gen in (1, 2):
            d.tick(gen * 10, fail_rank0(gen))
            d.tick(gen * 10 + 1, ranks(gen, F, F))
            d.tick(gen * 10 + 2, running(gen + 1))
        result = d.tick(50, fail_rank0(3))
        st = result.status
        assert st.phase is Phase.FAILED and st.restarts == 2
        assert condition(st, "Failed").reason == Reason.BACKOFF_LIMIT_EXCEEDED
        assert "restart budget of 2 used up" in condition(st, "Failed").message
        starts = len(d.starts())
        for t in range(60, 2000, 97):
            later = d.tick(t, ranks(3, F, F))
            assert later.of_type(StartGeneration) == [] and later.status.phase is Phase.FAILED
            assert reasons(later) == []
        assert len(d.starts()) == starts == 3

    def test_exit_code_rule_fails_at_once(self):
        d = Driver(spec(failurePolicy={"rules": [{"action": "Fail", "exitCodes": [3]}]}))
        d.start()
        result = d.tick(10, fail_rank0(1, code=3))
        assert result.status.phase is Phase.FAILED and result.status.restarts == 0
        assert condition(result.status, "Failed").reason == Reason.FAILED_BY_RULE
        assert d.tick(100, ranks(1, F, F)).of_type(StartGeneration) == []

    def test_message_rule_retries_before_a_later_fail_rule(self):
        rules = [{"action": "Retry", "message": "NCCL (timeout|error)"}, {"action": "Fail", "exitCodes": [1]}]
        d = Driver(spec(failurePolicy={"rules": rules}))
        d.start()
        result = d.tick(10, fail_rank0(1, code=1, message="NCCL timeout in allreduce"))
        assert result.status.phase is Phase.RESTARTING and result.status.restarts == 1
        d.tick(20, ranks(1, F, F))
        d.tick(21, running(2))
        result = d.tick(30, fail_rank0(2, code=1, message="CUDA out of memory"))
        assert condition(result.status, "Failed").reason == Reason.FAILED_BY_RULE

    def test_active_deadline_fails_the_job(self):
        d = Driver(spec(activeDeadlineSeconds=300))
        d.start()
        assert d.tick(299, running(1)).requeue_after == 1
        result = d.tick(300, running(1))
        assert result.status.phase is Phase.FAILED
        assert condition(result.status, "Failed").reason == Reason.DEADLINE_EXCEEDED
        assert result.of_type(StopGeneration) == [StopGeneration(1, False, Reason.DEADLINE_EXCEEDED)]


class TestSuspend:
    """Suspend stops the ranks gracefully and starts nothing; resume starts a new generation."""

    def test_suspend_then_resume_from_checkpoint(self):
        d = Driver()
        d.start()
        d.spec = spec(suspend=True)
        result = d.tick(10, running(1))
        assert result.status.phase is Phase.SUSPENDED
        assert result.of_type(StopGeneration) == [StopGeneration(1, True, Reason.SUSPENDED)]
        assert reasons(result) == [Reason.SUSPENDED]
        for t in (20, 30, 1000):
            quiet = d.tick(t, checkpoints=(checkpoint(60),))
            assert quiet.of_type(StartGeneration) == [] and quiet.status.phase is Phase.SUSPENDED
            assert reasons(quiet) == ([Reason.SUSPENDED] if t == 20 else [])  # once the ranks are gone

        d.spec = spec()
        resumed = d.tick(1001, ranks(1, R), checkpoints=(checkpoint(60),))  # rank 1 still saving
        assert reasons(resumed) == [Reason.RESUMED] and resumed.of_type(StartGeneration) == []
        again = d.tick(1002, checkpoints=(checkpoint(60),))
        assert reasons(again) == [Reason.RESTARTED_FROM_CHECKPOINT]  # resumed only once
        (start,) = again.of_type(StartGeneration)
        assert start.generation == 2 and start.config.checkpoint.resume_from.endswith("step-00000060")
        assert condition(again.status, "Suspended").status == "False"
        assert d.tick(1003, running(2)).status.phase is Phase.RUNNING

    def test_suspended_event_names_the_step_the_ranks_stopped_at(self):
        """The ranks agree on their last step after the request: the first event cannot know
        it, the one after they stop says it, as the checkpoint does."""
        d = Driver()
        d.start()
        d.tick(5, running(1), Progress(generation=1, step=66))
        d.spec = spec(suspend=True)
        asked = d.tick(6, running(1), Progress(generation=1, step=66))
        (suspending,) = asked.of_type(Event)
        assert "step 66 seen last" in suspending.message and "Suspended at" not in suspending.message
        saving = d.tick(7, ranks(1, R, S), Progress(generation=1, step=76), (checkpoint(60),))
        assert reasons(saving) == []
        done = d.tick(8, ranks(1, S, S), Progress(generation=1, step=76), (checkpoint(60), checkpoint(76)))
        assert [e.message for e in done.of_type(Event)] == ["Suspended at step 76; checkpoint of step 76 kept"]
        assert condition(done.status, "Suspended").message == "Ranks stopped at step 76; checkpoint of step 76 kept"
        assert d.tick(9, ranks(1, S, S), Progress(generation=1, step=76), (checkpoint(76),)).actions == ()

    def test_a_job_suspended_before_it_ran_says_so_once(self):
        d = Driver(spec(suspend=True))
        first = d.tick()
        assert [e.message for e in first.of_type(Event)][1:] == ["Suspended at step 0; no checkpoint"]
        assert d.tick(1).actions == ()


class TestStatus:
    """Status is level-triggered and stable: same input, same output; conditions keep time."""

    def test_same_inputs_give_same_status_and_no_new_events(self):
        d = Driver()
        d.start()
        seen = dict(at=10, ranks=fail_rank0(1), checkpoints=(checkpoint(40),))
        first = d.tick(**seen)
        second = d.tick(**seen)
        assert second.status == first.status
        assert reasons(second) == [] and second.of_type(StartGeneration) == []
        # Literally the same inputs twice: equal results (no hidden state, no clock).
        obs = Observed(T0 + datetime.timedelta(seconds=10), fail_rank0(1))
        a = reconcile(JOB, d.spec, d.plan, d.history[1].status, obs)
        b = reconcile(JOB, d.spec, d.plan, d.history[1].status, obs)
        assert a == b

    def test_conditions_keep_transition_time_and_carry_observed_generation(self):
        d = Driver()
        d.start()
        running_since = condition(d.status, "Running").last_transition_time
        later = d.tick(500, running(1)).status
        assert condition(later, "Running").last_transition_time == running_since == "2025-03-01T12:00:01Z"
        assert all(c.observed_generation == 7 for c in later.conditions)
        assert later.observed_generation == 7
        failed = d.tick(600, fail_rank0(1)).status
        assert condition(failed, "Running").last_transition_time == "2025-03-01T12:10:00Z"

    def test_progress_lands_in_status(self):
        d = Driver()
        d.start()
        progress = Progress(generation=1, step=42, loss=2.5, tokens_per_second=1800.0, step_seconds=(0.11, 0.35))
        st = d.tick(30, running(1), progress, (checkpoint(40),)).status
        assert (st.step, st.loss, st.tokens_per_second) == (42, 2.5, 1800.0)
        assert [(r.rank, r.state, r.step_seconds) for r in st.ranks] == [(0, R, 0.11), (1, R, 0.35)]
        assert st.last_checkpoint == checkpoint(40)
        stale = Progress(generation=0, step=999)
        assert d.tick(31, running(1), stale).status.step == 42  # another generation's progress is ignored
