"""The live table of ``shardwright serve``: its rows from numbers, and how it is shown on a
terminal (redrawn in place) and into a pipe (plain lines on change, else every few seconds)."""

from __future__ import annotations

import dataclasses
import datetime
import io

from shardwright.operator.api.servingpool import LatencyStatus, PoolPhase, ReplicaState, ServingPoolStatus
from shardwright.operator.backends.pooltable import LiveTable, render
from shardwright.operator.controller.pool_observed import ReplicaObservation

T0 = datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc)
STATUS = ServingPoolStatus(phase=PoolPhase.UPDATING, replicas=3, ready_replicas=2, routable_replicas=1, updated_replicas=2, queue_depth=5,
                           ttft_seconds=LatencyStatus(p50=0.02, p99=0.1234), tpot_seconds=LatencyStatus(p50=0.01, p99=0.0456), tokens_per_second=812.25)
REPLICAS = (
    ReplicaObservation("pool-4", 4, "0123456789ab", ReplicaState.STARTING, T0),
    ReplicaObservation("pool-1", 1, "fedcba987654", ReplicaState.READY, T0, registered=True, routable=True, running=3, waiting=5,
                       ttft_p99=0.1234, tpot_p99=0.0456, tokens_per_second=812.25),
    ReplicaObservation("pool-3", 3, "0123456789ab", ReplicaState.READY, T0, registered=True, routed_away=True, running=1,
                       ttft_p99=0.0204, tpot_p99=0.0119, tokens_per_second=9.0),
)


def test_one_row_per_replica_in_start_order_and_the_pool_line():
    assert render(STATUS, REPLICAS) == [
        "REPLICA  STATE       REVISION  RUNNING  WAITING  TTFT p99  TPOT p99  TOKENS/S",
        "pool-1   Routable    fedcba98  3        5        123 ms    46 ms     812.2",
        "pool-3   RoutedAway  01234567  1        0        20 ms     12 ms     9.0",
        "pool-4   Starting    01234567  0        0        -         -         -",
        "Updating: replicas 3, ready 2, routable 1, updated 2; queue 5; TTFT p99 123 ms, TPOT p99 46 ms, tokens/s 812.2",
    ]


def test_a_pool_without_replicas_is_the_header_and_the_pool_line():
    assert render(ServingPoolStatus(), ()) == [
        "REPLICA  STATE  REVISION  RUNNING  WAITING  TTFT p99  TPOT p99  TOKENS/S",
        "Pending: replicas 0, ready 0, routable 0, updated 0; queue 0; TTFT p99 -, TPOT p99 -, tokens/s -",
    ]


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_into_a_pipe_the_table_prints_on_change_and_otherwise_every_few_seconds():
    out, clock = io.StringIO(), Clock()
    table = LiveTable(out, tty=False, every_s=5, clock=clock)
    busier = [REPLICAS[0], REPLICAS[1], dataclasses.replace(REPLICAS[2], running=2)]
    table.show(STATUS, REPLICAS)
    printed = len(out.getvalue().splitlines())
    assert printed == 5 and "\x1b" not in out.getvalue()
    clock.now = 1
    table.show(STATUS, REPLICAS)  # nothing changed
    table.show(STATUS, busier)  # only a figure changed: not before 5 s
    assert len(out.getvalue().splitlines()) == printed
    clock.now = 6
    table.show(STATUS, busier)
    assert len(out.getvalue().splitlines()) == 2 * printed and out.getvalue().splitlines()[-3].startswith("pool-3   RoutedAway  01234567  2")
    clock.now = 6.5
    table.say("Normal  ReplicaStarted: pool-5")
    table.show(STATUS.model_copy(update={"routable_replicas": 2}), busier)  # a count changed: at once
    lines = out.getvalue().splitlines()
    assert len(lines) == 3 * printed + 1 and lines[2 * printed] == "Normal  ReplicaStarted: pool-5" and "routable 2" in lines[-1]


def test_on_a_terminal_the_table_is_redrawn_in_place_below_the_events():
    out = io.StringIO()
    table = LiveTable(out, tty=True)
    table.show(STATUS, REPLICAS)
    first = out.getvalue()
    table.show(STATUS, REPLICAS)  # unchanged: nothing written
    assert out.getvalue() == first
    table.say("Normal  ScaledUp: 3 -> 4")
    after_event = out.getvalue()[len(first):]
    assert after_event.startswith("\x1b[5F\x1b[J") and after_event.splitlines()[0].endswith("Normal  ScaledUp: 3 -> 4")
    assert after_event.splitlines()[1:] == first.splitlines()  # the table again, below the event
    table.show(STATUS.model_copy(update={"queue_depth": 7}), REPLICAS)
    redraw = out.getvalue()[len(first) + len(after_event):]
    assert redraw.startswith("\x1b[5F\x1b[J") and "queue 7" in redraw.splitlines()[-1]
