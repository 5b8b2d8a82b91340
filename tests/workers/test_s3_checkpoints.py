"""Checkpoints on an object store: the Checkpointer writing ``s3://`` through DCP's fsspec
writer to a real S3-compatible server on loopback (tests/support/s3.py), at 2 gloo ranks.

Commit on an object store is the manifest written last (no folder rename); a restarted set
of ranks resumes bit for bit from it, and a damaged shard is set aside under
``step-N.corrupt/`` while the previous checkpoint is loaded.
"""

from __future__ import annotations

import hashlib
import os

import pytest
import torch
from torch import nn

from shardwright.workers import storage
from shardwright.workers.checkpoint import Checkpointer, damage
from shardwright.workers.config import CheckpointConfig
from shardwright.workers.manifest import committed
from tests.support.dist_pool import DistPool
from tests.support.s3 import s3_server

OWNER = "uid-s3"


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    with s3_server(tmp_path_factory.mktemp("s3")) as server:
        yield server


@pytest.fixture()
def ranks():
    """Two gloo ranks for one phase of a test; ``ranks()`` again is a restart (new processes)."""
    started: list[DistPool] = []

    def start() -> DistPool:
        for pool in started:
            pool.close()
        started.append(DistPool(2))
        return started[-1]

    yield start
    for pool in started:
        pool.close()


def _use(env: dict[str, str]) -> None:
    """The server's keys and endpoint in this process's environment, where botocore reads
    them; fsspec's cached filesystems (made for another test's server) are dropped."""
    import s3fs

    os.environ.update(env)
    s3fs.S3FileSystem.clear_instance_cache()


def _model() -> tuple[nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.Tanh(), nn.Linear(32, 4))
    return model, torch.optim.AdamW(model.parameters(), lr=1e-2)


def _digest(model: nn.Module, optimizer: torch.optim.Optimizer) -> str:
    """A hash of every parameter and optimizer-state tensor, bit for bit."""
    h = hashlib.sha256()
    tensors = [*model.state_dict().values()] + [
        v for state in optimizer.state_dict()["state"].values() for v in state.values() if torch.is_tensor(v)]
    for t in tensors:
        h.update(t.detach().reshape(-1).contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _checkpointer(uri: str, **cfg) -> Checkpointer:
    return Checkpointer(CheckpointConfig(dir=uri, owner=OWNER, **cfg), layout="dp=2,sp=1", generation=1)


def train_and_save(uri: str, env: dict[str, str], steps: list[int], async_save: bool) -> list[str]:
    """Train a few steps, checkpointing at each of ``steps``; digests after each save."""
    _use(env)
    model, optimizer = _model()
    checkpointer = _checkpointer(uri, keep=2, async_save=async_save)
    digests, done = [], 0
    for step in steps:
        for _ in range(step - done):
            optimizer.zero_grad()
            model(torch.ones(8, 16) * 0.1 * step).square().mean().backward()
            optimizer.step()
        done = step
        checkpointer.save(step, model, optimizer, data_position=step)
        digests.append(_digest(model, optimizer))
    checkpointer.wait()
    return digests


def resume(uri: str, env: dict[str, str]) -> tuple[int | None, list[dict], str]:
    """A fresh model loads what ``resume_point`` names: its step, the rejected, its digest."""
    _use(env)
    model, optimizer = _model()
    checkpointer = _checkpointer(uri, resume_newest=True)
    point = checkpointer.resume_point()
    manifest, rejected = checkpointer.load(point, model, optimizer)
    return (manifest or {}).get("step"), rejected, _digest(model, optimizer)


@pytest.mark.parametrize("async_save", [False, True], ids=["sync", "async"])
def test_restarted_ranks_resume_bit_for_bit_from_the_newest_committed_object_checkpoint(s3, ranks, async_save):
    uri = s3.uri(f"resume-{async_save}")
    saved = ranks().run(train_and_save, uri, s3.env(), [5, 10, 15], async_save)
    assert saved[0] == saved[1]  # replicated: both ranks hold the same state

    keys = s3.keys(f"resume-{async_save}/")
    # keep=2: step 5 was pruned; each kept step has DCP's files and the manifest that commits it.
    assert {k.split("/")[1] for k in keys} == {"step-00000010", "step-00000015"}, keys
    assert {k.split("/")[2] for k in keys if "step-00000015" in k} >= {"manifest.json", ".metadata", "__0_0.distcp"}, keys

    loaded = ranks().run(resume, uri, s3.env())  # new processes: what a rescheduled pod is
    assert [(step, rejected) for step, rejected, _ in loaded] == [(15, []), (15, [])]
    assert {digest for *_, digest in loaded} == {saved[0][-1]}  # bit-identical to the state saved at 15


def test_a_damaged_shard_is_set_aside_and_the_previous_checkpoint_loaded(s3, ranks, monkeypatch):
    uri = s3.uri("damaged")
    for name, value in s3.env().items():
        monkeypatch.setenv(name, value)
    _use(s3.env())
    saved = ranks().run(train_and_save, uri, s3.env(), [10, 20], False)
    newest = committed(uri)[-1]
    assert newest["step"] == 20 and newest["path"] == f"{uri}/step-00000020"
    damage(newest)
    # A save that died before its commit: shards under step-30/, no manifest.
    storage.at(uri).write_bytes(f"{uri}/step-00000030/__0_0.distcp", b"half written")

    loaded = ranks().run(resume, uri, s3.env())
    assert [step for step, *_ in loaded] == [10, 10]
    assert [r["step"] for r in loaded[0][1]] == [20] and "fails its CRC-32" in loaded[0][1][0]["reason"]
    assert {digest for *_, digest in loaded} == {saved[0][0]}  # the state saved at step 10
    folders = {k.split("/")[1] for k in s3.keys("damaged/")}
    # Set aside (kept for a look), the crashed save cleared at start, step 10 still committed.
    assert folders == {"step-00000010", "step-00000020.corrupt"}, folders
    assert [m["step"] for m in committed(uri)] == [10]
