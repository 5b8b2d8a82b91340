"""What every backend offers the control loop: start and stop generations, observe ranks."""

from __future__ import annotations

import datetime
from typing import Protocol

from shardwright.operator.controller import Observed, StartGeneration, StopGeneration


class Backend(Protocol):
    """Carries out the controller's actions somewhere (local Ray actors, Kubernetes pods)."""

    def start(self, action: StartGeneration) -> None:
        """Start every rank of the generation; returns once they are launched."""

    def stop(self, action: StopGeneration) -> None:
        """Stop the generation's ranks: gracefully (checkpoint, then exit) or at once."""

    def observe(self, now: datetime.datetime) -> Observed:
        """Rank states of every generation started, rank 0's progress, committed checkpoints."""

    def close(self) -> None:
        """End everything this backend started."""
