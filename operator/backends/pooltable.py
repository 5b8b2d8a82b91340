"""The live table ``shardwright serve`` shows: one row per replica, then the pool's line.

``render`` is pure (the status and the replicas' observations in, lines out). ``LiveTable``
shows it: on a terminal it redraws the table in place below the events; into a pipe (a log,
CI) it prints the table as plain lines when a replica or a count changes, and otherwise at
most every ``every_s`` seconds while the figures move, so logs stay readable.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable, Sequence
from typing import TextIO

from shardwright.operator.api.servingpool import ServingPoolStatus
from shardwright.operator.controller.pool_observed import ReplicaObservation

COLUMNS = ("REPLICA", "STATE", "REVISION", "RUNNING", "WAITING", "TTFT p99", "TPOT p99", "TOKENS/S")
#: Characters of a revision shown (as ``kubectl`` shortens hashes).
REVISION_CHARS = 8


def render(status: ServingPoolStatus, replicas: Sequence[ReplicaObservation]) -> list[str]:
    """The header, one row per replica (in start order), the pool's summary line."""
    rows = [COLUMNS] + [(r.name, replica_state(r), r.revision[:REVISION_CHARS], str(r.running), str(r.waiting), _ms(r.ttft_p99),
                         _ms(r.tpot_p99), _rate(r.tokens_per_second)) for r in sorted(replicas, key=lambda r: r.index)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    return lines + [summary(status)]


def summary(status: ServingPoolStatus) -> str:
    return (f"{status.phase}: replicas {status.replicas}, ready {status.ready_replicas}, routable {status.routable_replicas}, "
            f"updated {status.updated_replicas}; queue {status.queue_depth}; TTFT p99 {_ms(status.ttft_seconds.p99)}, "
            f"TPOT p99 {_ms(status.tpot_seconds.p99)}, tokens/s {_rate(status.tokens_per_second)}")


def replica_state(r: ReplicaObservation) -> str:
    """What the router does with it, where that says more than the process state."""
    if r.routable:
        return "Routable"
    if r.routed_away and r.alive:
        return "RoutedAway"
    return str(r.state)


def shape(status: ServingPoolStatus, replicas: Sequence[ReplicaObservation]) -> Hashable:
    """What makes a pipe print the table at once: the replicas and their states, the counts."""
    return (status.phase, status.replicas, status.ready_replicas, status.routable_replicas, status.updated_replicas,
            tuple(sorted((r.name, replica_state(r), r.revision) for r in replicas)))


class LiveTable:
    def __init__(self, out: TextIO, *, tty: bool | None = None, every_s: float = 5.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.out = out
        self.tty = out.isatty() if tty is None else tty
        #: Pipe: seconds between two prints of a table whose shape did not change.
        self.every_s = every_s
        self._clock = clock
        self._lines: list[str] = []  # the table last rendered
        self._drawn = 0  # terminal: lines of the table on screen now
        self._printed: list[str] = []  # pipe: the table last printed, its shape and when
        self._shape: Hashable = None
        self._printed_at = float("-inf")

    def say(self, line: str) -> None:
        """A line above the table (an event, a note)."""
        if self.tty:
            self._erase()
            self._write([line] + self._lines)
            self._drawn = len(self._lines)
        else:
            self._write([line])

    def show(self, status: ServingPoolStatus, replicas: Sequence[ReplicaObservation]) -> None:
        lines, now_shape = render(status, replicas), shape(status, replicas)
        if self.tty:
            if lines != self._lines:
                self._erase()
                self._write(lines)
                self._drawn = len(lines)
        elif now_shape != self._shape or (lines != self._printed and self._clock() - self._printed_at >= self.every_s):
            self._write(lines)
            self._printed, self._shape, self._printed_at = lines, now_shape, self._clock()
        self._lines = lines

    def _erase(self) -> None:
        if self._drawn:
            self.out.write(f"\x1b[{self._drawn}F\x1b[J")  # to the table's first line, clear to the end of the screen

    def _write(self, lines: list[str]) -> None:
        self.out.write("".join(line + "\n" for line in lines))
        self.out.flush()


def _ms(seconds: float | None) -> str:
    return f"{seconds * 1000:.0f} ms" if seconds is not None else "-"


def _rate(value: float | None) -> str:
    return f"{value:.1f}" if value is not None else "-"
