"""``runtime: ray``'s driver for real: ``shardwright ray-head`` on this machine, with the
generation's worker pods played by their own command (``python -m shardwright.workers.raynode``,
each a Ray node joining the head), the ranks as Ray actors pinned to their "pod", gloo
between them, DCP checkpoints on disk.

Both "pods" share this host, so each gets its own telemetry port and Ray temp directory (on
Kubernetes every pod has its own network and files) and the head its own GCS port and temp
directory (other Ray clusters may run here).
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml

from shardwright.operator.api import validate
from shardwright.operator.backends import pods as render
from shardwright.operator.backends import raypods
from shardwright.operator.backends.ports import free_port
from shardwright.operator.backends.probe import request_json
from shardwright.operator.controller import JobRef, StartGeneration, worker_config
from shardwright.operator.planner import plan_uniform
from shardwright.workers.faults import parse_fault
from shardwright.workers.config import TOKEN_ENV
from shardwright.workers.manifest import committed

ROOT = Path(__file__).resolve().parents[2]
STEPS = 12
#: The job's telemetry token, as its Secret would hold it.
TOKEN = "ray-head-test-token"



@dataclasses.dataclass
class Generation:
    head: subprocess.Popen
    workers: list[subprocess.Popen]
    #: Where rank 0 serves /status.
    rank0: str
    checkpoints: Path
    #: Ray's files: the head's under it, pod i's under ``i/``.
    temp: Path

    def rank_actors(self, pod: int) -> int:
        """Rank actors that ran on pod ``pod``'s Ray node (Ray logs each worker process there)."""
        return sum(":actor_name:RankActor" in f.read_text() for f in (self.temp / str(pod)).glob("session_latest/logs/worker-*.out"))

    def stop(self) -> None:
        for process in [self.head, *self.workers]:
            if process.poll() is None:
                process.terminate()
        for process in [self.head, *self.workers]:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
        shutil.rmtree(self.temp, ignore_errors=True)


def start_generation(tmp_path: Path, faults: tuple[str, ...] = (), steps: int = STEPS) -> Generation:
    """Render generation 1 of the tiny example as ``runtime: ray`` and run its pods' commands here."""
    doc = yaml.safe_load((ROOT / "examples" / "tiny-train.yaml").read_text())
    doc["spec"].update(runtime="ray", training={**doc["spec"]["training"], "steps": steps}, checkpoint={"intervalSteps": 6, "keep": 2})
    job, problems = validate(doc)
    assert not problems, problems
    plan = plan_uniform(job.spec)
    checkpoints = tmp_path / "checkpoints"
    ref = JobRef(job.metadata.name, "default", str(checkpoints), faults=tuple(parse_fault(f) for f in faults))
    action = StartGeneration(1, plan, worker_config(ref, job.spec, plan, 1, None))
    head, *workers = raypods.render_pods(render.Owner(job.metadata.name, "default", "uid"), action,
                                         {g.name: g for g in job.spec.workers}, render.PodSettings())
    gcs = free_port()
    env = {e["name"]: e["value"] for e in head["spec"]["containers"][0]["env"] if "value" in e}
    env[TOKEN_ENV] = TOKEN  # as the kubelet reads it from the job's Secret (valueFrom)
    env["MASTER_PORT"] = str(free_port())
    members = [dataclasses.replace(pod, telemetry_port=free_port()) for pod in raypods.decode_pods(env[raypods.RAY_PODS_ENV])]
    env[raypods.RAY_PODS_ENV] = raypods.encode_pods(members)
    base = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    temp = Path(tempfile.mkdtemp(prefix="swray", dir="/tmp"))  # Ray's socket paths must stay short
    command = head["spec"]["containers"][0]["command"]
    head_process = subprocess.Popen(
        [sys.executable, *command[1:], f"--port={gcs}", f"--ray-start-arg=--temp-dir={temp}", "--join-timeout=60"],
        env=base | env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    pods = []
    for pod in workers:
        command = pod["spec"]["containers"][0]["command"]
        address = command[3]
        assert address == f"{raypods.head_name(render.Owner(job.metadata.name, 'default', 'uid'), 1)}.tiny-train.default.svc:6379"
        with (tmp_path / f"{pod['metadata']['name']}.log").open("w") as log:
            # Nodes sharing a temp directory pick socket names that collide when they start together.
            own = f"--temp-dir={temp}/{len(pods)}"
            pods.append(subprocess.Popen([sys.executable, *command[1:3], f"127.0.0.1:{gcs}", *command[4:], own], env=base,
                                         stdout=log, stderr=subprocess.STDOUT))
    return Generation(head_process, pods, f"http://127.0.0.1:{members[0].telemetry_port}/status", checkpoints, temp)


@pytest.fixture()
def generation(tmp_path):
    made: list[Generation] = []
    yield lambda **kw: made.append(start_generation(tmp_path, **kw)) or made[-1]
    for g in made:
        g.stop()


def test_driver_trains_the_generation_on_the_joined_pods(generation):
    g = generation()
    out, _ = g.head.communicate(timeout=240)
    assert g.head.returncode == 0, out
    assert "2 worker pods joined" in out and f"Every rank finished (step {STEPS})" in out
    final = committed(g.checkpoints)[-1]
    assert final["step"] == STEPS and final["worldSize"] == 2
    assert [g.rank_actors(pod) for pod in (0, 1)] == [1, 1]  # each rank pinned to its own pod
    for worker in g.workers:  # the worker pods leave with their head, successfully
        assert worker.wait(timeout=30) == 0


def test_a_failed_rank_fails_the_driver_naming_it(generation):
    g = generation(faults=("kill:rank=1:step=3",))
    out, _ = g.head.communicate(timeout=240)
    assert g.head.returncode == 1, out
    assert "ERROR shardwright.operator.backends.rayhead: Rank 1 failed: rank process died" in out  # the cause first
    assert not committed(g.checkpoints)  # it died before the first checkpoint (step 6)
    for worker in g.workers:
        assert worker.wait(timeout=30) == 0


def test_sigterm_to_every_pod_stops_the_ranks_after_a_checkpoint(generation):
    """A graceful stop (suspend, resize) deletes every pod of the generation: the driver asks
    the ranks for a checkpoint and exits 0; the worker pods stay until the head has gone."""
    g = generation(steps=1000)
    deadline = time.monotonic() + 120
    while (request_json(g.rank0, token=TOKEN) or {}).get("step", 0) < 2:
        assert g.head.poll() is None and time.monotonic() < deadline, "rank 0 never reported step 2"
        time.sleep(0.2)
    for process in [g.head, *g.workers]:
        process.send_signal(signal.SIGTERM)
    out, _ = g.head.communicate(timeout=120)
    assert g.head.returncode == 0, out
    assert "Every rank stopped after a checkpoint" in out
    last = committed(g.checkpoints)[-1]
    assert 2 <= last["step"] < 1000 and last["worldSize"] == 2
    for worker in g.workers:
        assert worker.wait(timeout=30) == 0
