"""Which checkpoint a restarted generation loads (``Checkpointer.resume_point``): on a
cluster the controller may not have seen the last commit (rank 0 killed before it was
probed, a NetworkPolicy blocking the probes), so a restart takes the newest checkpoint its
own job committed to storage, never one an earlier job of the same name left there."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch.distributed as dist
import yaml

from shardwright.operator.api import TrainingJob
from shardwright.operator.controller import JobRef, worker_config
from shardwright.operator.planner import plan_for_capacity
from shardwright.workers.checkpoint import Checkpointer
from shardwright.workers.config import CheckpointConfig
from shardwright.workers.manifest import MANIFEST, step_dir

ROOT = Path(__file__).resolve().parents[2]


def commit(root: Path, step: int, owner: str | None) -> str:
    """A committed checkpoint as far as listing goes: its folder and manifest."""
    folder = Path(step_dir(root, step))
    folder.mkdir(parents=True)
    (folder / MANIFEST).write_text(json.dumps({"step": step, **({"owner": owner} if owner else {})}))
    return str(folder)


@pytest.fixture()
def one_rank():
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def point(root: Path, **cfg) -> str | None:
    return Checkpointer(CheckpointConfig(dir=str(root), **cfg), layout="dp=1,sp=1", generation=2).resume_point()


def test_a_restart_takes_its_jobs_newest_commit_over_the_controllers_choice(one_rank, tmp_path):
    known = commit(tmp_path, 40, "uid-b")
    newest = commit(tmp_path, 80, "uid-b")
    commit(tmp_path, 120, "uid-a")  # an earlier job of the same name
    assert point(tmp_path, resume_from=known, resume_newest=True, owner="uid-b") == newest
    assert point(tmp_path, resume_from=None, resume_newest=True, owner="uid-b") == newest  # nothing seen by the controller
    assert point(tmp_path, resume_from=known, resume_newest=False, owner="uid-b") == known  # the embedded default: as told
    assert point(tmp_path, resume_from=newest, resume_newest=True, owner="uid-c") == newest  # none of its own: as told
    assert point(tmp_path, resume_from=None, resume_newest=True, owner="uid-c") is None


def test_the_operator_asks_restarts_and_only_restarts_to_look_in_storage():
    job = TrainingJob.model_validate(yaml.safe_load((ROOT / "examples" / "tiny-train.yaml").read_text()))
    plan = plan_for_capacity(job.spec, None, None)
    ref = JobRef(name="tiny-train", namespace="default", checkpoint_dir="/checkpoints/default/tiny-train", resume_newest=True, uid="uid-b")
    first, second = (worker_config(ref, job.spec, plan, generation, None).checkpoint for generation in (1, 2))
    assert (first.resume_newest, second.resume_newest) == (False, True)  # generation 1 of a job made again starts afresh
    assert first.owner == second.owner == "uid-b"
    local = worker_config(JobRef(name="tiny-train", namespace="default", checkpoint_dir="x"), job.spec, plan, 2, None).checkpoint
    assert not local.resume_newest and local.owner is None
