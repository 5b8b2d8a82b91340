"""The invariant checker flags each kind of broken history: a recorded run that kept every
invariant is doctored one way at a time, and exactly the invariant it breaks must fail."""

from __future__ import annotations

import dataclasses

import pytest

from bench import chaos_check, chaos_plan
from shardwright.workers.faults import parse_fault

STEPS = chaos_plan.FIXED.steps
#: A kill after step 25 that restarts from the checkpoint of step 20.
PLAN = chaos_plan.Plan(0, chaos_plan.FIXED, (parse_fault("kill:rank=1:step=25"),), max_restarts=1)


def loss(step: int) -> float:
    return 4.0 / step


def step_lines(generation: int, steps: range, began: float) -> list[dict]:
    return [{"step": s, "loss": loss(s), "generation": generation, "time": began + i * 0.1} for i, s in enumerate(steps)]


def event(time: float, reason: str, message: str) -> dict:
    return {"time": time, "type": "Normal", "reason": reason, "message": message}


def reference() -> chaos_check.History:
    status = {"phase": "Complete", "restarts": 0, "generation": 1, "loss": loss(STEPS)}
    events = [event(0.0, "GenerationStarted", "Generation 1 (dp=2,sp=1 over 2 ranks) starts from scratch")]
    return chaos_check.History(status, events, step_lines(1, range(1, STEPS + 1), 1.0), {}, "", 0)


def killed_run() -> chaos_check.History:
    """What a faithful run of PLAN records."""
    status = {"phase": "Complete", "restarts": 1, "generation": 2, "loss": loss(STEPS), "conditions": []}
    events = [
        event(0.0, "GenerationStarted", "Generation 1 (dp=2,sp=1 over 2 ranks) starts from scratch"),
        event(10.0, "RankFailed", "Rank 1 failed: rank process died"),
        event(11.0, "RestartedFromCheckpoint", "Generation 2 (dp=2,sp=1 over 2 ranks) resumes from step 20"),
    ]
    steps = step_lines(1, range(1, 26), 1.0) + step_lines(2, range(21, STEPS + 1), 12.0)
    logs = {1: "rank 1: injected fault kill after step 25 (generation 1): exiting with code 137\n"}
    return chaos_check.History(status, events, steps, logs, "", 0)


def broken(run: chaos_check.History, plan: chaos_plan.Plan = PLAN) -> list[str]:
    return [v.invariant for v in chaos_check.check(plan, run, reference()) if not v.ok]


def test_a_faithful_history_keeps_every_invariant():
    assert broken(killed_run()) == []


def doctor_loss(run):
    steps = [dict(line) for line in run.steps]
    steps[-10]["loss"] += 1e-12  # one step off by far less than any tolerance: not bit for bit
    return dataclasses.replace(run, steps=steps)


def doctor_overlap(run):
    late = {"step": 26, "loss": loss(26), "generation": 1, "time": 11.5}  # generation 1 trains after 2 started
    return dataclasses.replace(run, steps=[*run.steps, late])


def doctor_extra_restart(run):
    return dataclasses.replace(run, status={**run.status, "restarts": 2})


def doctor_unstruck(run):
    return dataclasses.replace(run, logs={})


def doctor_healthy_rejected(run):
    return dataclasses.replace(run, status={**run.status, "rejectedCheckpoints": [20]})


def doctor_failed(run):
    failed = {"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded", "message": "restart budget of 1 used up"}
    return dataclasses.replace(run, status={**run.status, "phase": "Failed", "conditions": [failed]}, exit_code=1)


def doctor_duplicate_generation(run):
    again = event(11.5, "RestartedFromCheckpoint", "Generation 2 (dp=2,sp=1 over 2 ranks) resumes from step 20")
    return dataclasses.replace(run, events=[*run.events, again])


@pytest.mark.parametrize("doctor, invariant", [
    (doctor_loss, "loss"),
    (doctor_overlap, "one generation at a time"),
    (doctor_duplicate_generation, "one generation at a time"),
    (doctor_extra_restart, "restarts"),
    (doctor_unstruck, "faults struck"),
    (doctor_healthy_rejected, "rejected only damaged"),
    (doctor_failed, "outcome"),
], ids=lambda x: getattr(x, "__name__", x))
def test_a_doctored_history_breaks_its_invariant(doctor, invariant):
    assert broken(doctor(killed_run())) == [invariant]


def test_a_spent_budget_must_fail_with_its_reason():
    spent = dataclasses.replace(PLAN, max_restarts=0)
    assert spent.expect_failure
    assert "outcome" in broken(killed_run(), spent)  # completing is wrong when the budget was one short
    failed = {"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded", "message": "restart budget of 0 used up"}
    run = dataclasses.replace(killed_run(), status={"phase": "Failed", "restarts": 0, "generation": 1, "conditions": [failed]},
                              events=killed_run().events[:2], steps=killed_run().steps[:25], exit_code=1)
    assert broken(run, spent) == []


def test_after_a_resize_the_loss_may_differ_within_the_tolerance():
    resharded = event(11.0, "Resharded", "Checkpoint of step 20 written at world size 4 (dp=4,sp=1) loads at 2 (dp=2,sp=1)")
    run = doctor_loss(killed_run())
    run = dataclasses.replace(run, events=[*run.events, resharded])
    assert broken(run) == []
    far = [dict(line, loss=line["loss"] + (0.01 if line["step"] == 40 else 0)) for line in run.steps]
    assert broken(dataclasses.replace(run, steps=far)) == ["loss"]


def test_a_kill_counted_into_its_generation_struck_where_its_generation_logged_it():
    """``into``: its step is whatever its generation resumed at plus ``into``; the generation
    in the rank's line decides."""
    into = dataclasses.replace(PLAN, faults=(parse_fault("kill:rank=1:into=5:gen=1"),))
    assert broken(killed_run(), into) == []
    elsewhere = {1: "rank 1: injected fault kill after step 25 (generation 2): exiting with code 137\n"}
    assert broken(dataclasses.replace(killed_run(), logs=elsewhere), into) == ["faults struck"]
