"""A rank's share of a micro-batch and the loss over its real target tokens, as the training
step and the held-out evaluation both compute them."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from . import data as data_mod
from .mixers import SequenceContext
from .packing import IGNORE


def token_losses(logits: torch.Tensor, targets: torch.Tensor, reduction: str = "sum") -> torch.Tensor:
    """Cross-entropy of ``logits [B, T, V]`` against ``targets [B, T]``, summed (or per token
    with ``reduction="none"``); ``IGNORE`` targets count nothing."""
    return F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=IGNORE, reduction=reduction)


def rank_batch(batch: data_mod.Batch, ctx: SequenceContext) -> data_mod.Batch:
    """This rank's tokens of a micro-batch: inputs, targets, positions and segments sharded
    along the sequence alike. Without documents every row of positions is ``0..T-1``, and
    one ``[T]`` row serves the batch (rotary computes its angles once, as before)."""
    if batch.segments is None:
        return data_mod.Batch(ctx.shard(batch.inputs, dim=1), ctx.shard(batch.targets, dim=1), ctx.shard(batch.positions[0], dim=0))
    inputs, targets, positions, segments = (ctx.shard(x, dim=1) for x in (batch.inputs, batch.targets, batch.positions, batch.segments))
    return data_mod.Batch(inputs, targets, positions, segments)
