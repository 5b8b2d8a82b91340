"""The data stream's batches and held-out split (workers/data.py, docs/data.md)."""

from __future__ import annotations

import torch

from workers import data as data_mod
from workers.config import DataConfig


def test_synthetic_batch_and_heldout_stream():
    cfg = DataConfig(seq_len=16, global_batch=4, micro_batch=2, seed=3)
    train, held = data_mod.dataset(cfg, 64), data_mod.heldout(cfg, 64)
    batch = data_mod.collate(train, range(2, 5))
    assert batch.inputs.shape == batch.targets.shape == batch.positions.shape == (3, 16)
    assert batch.segments is None
    assert torch.equal(batch.positions[1], torch.arange(16))
    assert torch.equal(batch.targets[:, :-1], batch.inputs[:, 1:])
    # The held-out samples walk the same chain (same task) but are none of training's samples.
    assert held.successors == train.successors
    held_rows = {tuple(held[i].tolist()) for i in range(64)}
    assert not held_rows & {tuple(train[i].tolist()) for i in range(64)}
