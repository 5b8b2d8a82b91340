"""The embedded default's rank processes across generations, driven directly: real Ray actors,
real gloo rendezvous.

A rank process whose run raised is never handed to the next generation: a failed
``init_process_group`` leaves torch.distributed's group counter one ahead, and that
process's groups then never meet their peers' (CI saw a rendezvous port taken by another
socket turn into four generations of store timeouts).
"""

from __future__ import annotations

import dataclasses
import datetime
import socket
import time
from pathlib import Path

import pytest
import yaml

from shardwright.operator.api import Reason, RankState, validate
from shardwright.operator.backends.local import LocalRayBackend, LocalSettings, local_slots
from shardwright.operator.backends.ports import PORT_RANGE, ephemeral_floor, free_port
from shardwright.operator.controller import JobRef, StopGeneration, worker_config
from shardwright.operator.planner import plan_uniform

ROOT = Path(__file__).resolve().parents[2]
#: Seconds a generation of the tiny job may take here, actor start-up included.
GENERATION_TIMEOUT_S = 120


def states(backend: LocalRayBackend, generation: int) -> list[tuple[RankState, str]]:
    observed = backend.observe(datetime.datetime.now(datetime.timezone.utc))
    return [(r.state, r.message) for r in observed.ranks if r.generation == generation]


def wait_for(backend: LocalRayBackend, generation: int, done) -> list[tuple[RankState, str]]:
    deadline = time.monotonic() + GENERATION_TIMEOUT_S
    while time.monotonic() < deadline:
        seen = states(backend, generation)
        if done(seen):
            return seen
        time.sleep(0.5)
    raise AssertionError(f"generation {generation} still {seen} after {GENERATION_TIMEOUT_S} s")


@pytest.mark.slow
def test_a_failed_rendezvous_does_not_poison_the_next_generation(tmp_path):
    doc = yaml.safe_load((ROOT / "examples" / "tiny-train.yaml").read_text())
    doc["spec"]["training"]["steps"] = 3
    job, problems = validate(doc)
    assert not problems, problems
    plan = plan_uniform(job.spec)
    ref = JobRef(job.metadata.name, "default", str(tmp_path / "checkpoints"))
    backend = LocalRayBackend(LocalSettings(checkpoint_dir=tmp_path / "checkpoints"))
    try:
        with socket.socket() as busy:  # someone else's socket on the rendezvous port
            busy.bind(("127.0.0.1", 0))
            busy.listen()
            slots = [dataclasses.replace(s, env=s.env.model_copy(update={"master_port": busy.getsockname()[1]})) for s in local_slots(2)]
            backend.launch(1, worker_config(ref, job.spec, plan, 1, None), slots)
            first = wait_for(backend, 1, lambda seen: seen[0][0] is RankState.FAILED)
            assert "EADDRINUSE" in first[0][1] or "address already in use" in first[0][1], first
            backend.stop(StopGeneration(1, graceful=False, reason=Reason.RANK_FAILED))
        backend.launch(2, worker_config(ref, job.spec, plan, 2, None), local_slots(2))
        second = wait_for(backend, 2, lambda seen: all(s is not RankState.RUNNING for s, _ in seen))
        assert [s for s, _ in second] == [RankState.SUCCEEDED] * 2, second
    finally:
        backend.close()


def test_free_ports_stay_below_the_ephemeral_range():
    ports = {free_port() for _ in range(20)}
    assert all(PORT_RANGE[0] <= p < min(PORT_RANGE[1], ephemeral_floor()) for p in ports), ports
    for port in ports:
        with socket.socket() as s:
            s.bind(("127.0.0.1", port))
