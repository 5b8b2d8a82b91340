"""A failed rank's process ends at once (workers/launch.py), even with a thread that would
block its exit: after a peer died, DCP's asynchronous save can sit in a collective with it,
and a normal exit joins that thread (a pod outlived the failure by its 120 s grace period in
the cluster chaos run)."""

from __future__ import annotations

import multiprocessing
import threading
import time

from shardwright.workers.launch import ends_at_once_on_failure


def _blocked_then_fails() -> None:
    threading.Thread(target=threading.Event().wait, daemon=False).start()  # never ends
    raise RuntimeError("Connection closed by peer")


def _rank(run) -> None:
    ends_at_once_on_failure(run)


def test_a_failing_rank_ends_at_once_despite_a_blocked_thread():
    child = multiprocessing.get_context("spawn").Process(target=_rank, args=(_blocked_then_fails,))
    began = time.monotonic()
    child.start()
    child.join(timeout=60)
    try:
        assert child.exitcode == 1, "the rank did not end (a normal exit waits for its thread for ever)"
        assert time.monotonic() - began < 60
    finally:
        if child.is_alive():
            child.kill()
            child.join(5)


def test_a_rank_that_ends_well_returns():
    done = []
    ends_at_once_on_failure(lambda: done.append(1))
    assert done == [1]
