"""Shardwright for your own training script: keep gang start, restarts, telemetry and stragglers.

A job whose ``spec.workers[].command`` names your program runs it on every rank; these
few calls connect it to the controller (docs/sdk.md)::

    import shardwright.sdk as sdk

    run = sdk.init()                              # process group, device, the job's settings
    model = DistributedDataParallel(Net().to(run.device))
    optimizer = torch.optim.AdamW(model.parameters())
    with sdk.checkpoint(model, optimizer) as ckpt:
        for step in range(ckpt.start_step + 1, run.steps + 1):
            loss = train_step(model, optimizer, step)
            sdk.report(step, loss.item(), tokens=tokens_per_rank)
            ckpt.maybe_save(step)
            if sdk.should_stop():
                break
"""

from __future__ import annotations

import contextlib
from typing import Any

from .checkpoint import Checkpoint
from .env import Run, current, init

__all__ = ["Checkpoint", "Run", "checkpoint", "init", "report", "section", "should_stop"]


def checkpoint(model: Any, optimizer: Any) -> Checkpoint:
    """The job's checkpoints for ``model`` and ``optimizer`` (use as a context manager)."""
    return Checkpoint(current(), model, optimizer)


def report(step: int, loss: float, *, tokens: int | None = None) -> bool:
    """Step ``step`` (1-based) finished with this rank's ``loss`` after training on ``tokens``
    tokens; every rank calls it once per step. True when the job asked the ranks to stop."""
    return current().reporter.report(step, loss, tokens)


def section(name: str) -> contextlib.AbstractContextManager[None]:
    """Time a part of the step as ``compute`` or ``communication`` for the straggler detector."""
    return current().reporter.section(name)


def should_stop() -> bool:
    """Whether the last ``report`` carried a stop request (every rank sees the same)."""
    return current().reporter.stopping
