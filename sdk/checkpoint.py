"""``with sdk.checkpoint(model, optimizer) as ckpt``: resume from the job's checkpoint, commit at its interval.

Entering loads the checkpoint the controller chose for this generation (or, as the trainer
does, the newest one this job committed when that is newer) through the trainer's own
``Checkpointer``: DCP shards, a manifest with every file's CRC-32, an atomic commit, damaged
checkpoints set aside for the one before. ``ckpt.start_step`` is the step to continue after.
``ckpt.maybe_save(step)`` commits at ``spec.checkpoint.intervalSteps``, at the last step and
when the job asked the ranks to stop (asynchronously with ``spec.checkpoint.async``).
Leaving the block waits for the last commit and sends the final report.
"""

from __future__ import annotations

import time
from typing import Any

from torch import nn

from shardwright.workers.checkpoint import Checkpointer, damage

from .env import Run


class Checkpoint:
    """The job's checkpoints for one model and optimizer; collective on every rank."""

    def __init__(self, run: Run, model: nn.Module, optimizer: Any) -> None:
        cfg = run.config
        self.run, self.model, self.optimizer = run, model, optimizer
        self.checkpointer = Checkpointer(cfg.checkpoint, layout=cfg.parallel.layout, generation=cfg.generation)
        #: Steps already trained: the loaded checkpoint's, or 0.
        self.start_step = 0

    def __enter__(self) -> Checkpoint:
        manifest, resumed, rejected = self.checkpointer.resume(self.model, self.optimizer)
        self.start_step = resumed or 0
        if manifest is not None:
            self.run.reporter.telemetry.record_checkpoint(manifest)
        self.run.reporter.begin(self.start_step, resumed, rejected, loss=(manifest or {}).get("loss"))
        return self

    def due(self, step: int) -> bool:
        """Whether ``maybe_save(step)`` writes: the interval, the last step, or a stop request."""
        return self.checkpointer.due(step, self.run.steps) or self.run.reporter.stopping

    def maybe_save(self, step: int) -> bool:
        """Commit the state after ``step`` steps if it is due; collective. True if it saved."""
        if not self.due(step):
            return False
        reporter = self.run.reporter
        began = time.monotonic()
        reported = reporter.reported
        self.checkpointer.save(step, self.model, self.optimizer, data_position=step * self.run.config.data.global_batch,
                               loss=reported[1] if reported is not None and reported[0] == step else None)
        reporter.stall = time.monotonic() - began
        reporter.inject_faults(0.0, 0.0, during="checkpoint")
        self.record_commits()
        reporter.restart_clock()  # the save is reported as its stall, not as the next step's compute
        return True

    def record_commits(self) -> None:
        """Publish checkpoints committed since the last call; damage one if a fault says so."""
        for manifest in self.checkpointer.take_committed():
            self.run.reporter.telemetry.record_checkpoint(manifest)
            for fault in self.run.config.faults:
                if fault.kind == "corrupt-checkpoint" and fault.fires(rank=0, step=manifest["step"], generation=self.run.generation):
                    damage(manifest)

    def __exit__(self, exc_type, *_: Any) -> None:
        if exc_type is None:
            self.checkpointer.wait()
            self.record_commits()
            self.run.reporter.finish()
