"""A persistent pool of gloo rank processes for multi-process tests.

Starting P processes and a process group costs seconds; kernel tests run hundreds of
cases. A ``DistPool`` starts its ranks once, and ``pool.run(fn, *args)`` runs
``fn(*args)`` on every rank (``fn`` must be importable by name, i.e. module level) and
returns the per-rank results in rank order. An exception on any rank is re-raised here
with that rank's traceback; the pool is then closed, because a failed collective leaves
the group unusable, and the next ``get_pool`` builds a fresh one.
"""

from __future__ import annotations

import datetime
import multiprocessing as mp
import os
import traceback
from typing import Any, Callable

from shardwright.operator.backends.ports import free_port

#: Collective timeout inside pool ranks: far below torch's 30-minute default, so a
#: broken test fails in seconds instead of hanging CI.
COLLECTIVE_TIMEOUT_S = 60
#: How long ``run`` waits for a rank's result.
RESULT_TIMEOUT_S = 300



def _rank_main(rank: int, world: int, port: int, inbox: mp.Queue, outbox: mp.Queue) -> None:
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group(
        "gloo",
        rank=rank,
        world_size=world,
        timeout=datetime.timedelta(seconds=COLLECTIVE_TIMEOUT_S),
    )
    try:
        while (job := inbox.get()) is not None:
            fn, args, kwargs = job
            try:
                outbox.put((rank, True, fn(*args, **kwargs)))
            except BaseException:  # noqa: BLE001 - shipped back to the test as text
                outbox.put((rank, False, traceback.format_exc()))
    finally:
        dist.destroy_process_group()


class RankFailed(AssertionError):
    """A function run on the pool raised on at least one rank."""


class DistPool:
    """P long-lived processes forming one gloo group."""

    def __init__(self, world_size: int) -> None:
        self.world_size = world_size
        ctx = mp.get_context("spawn")
        port = free_port()
        self._inboxes = [ctx.Queue() for _ in range(world_size)]
        self._outbox = ctx.Queue()
        self._procs = [
            ctx.Process(
                target=_rank_main,
                args=(r, world_size, port, self._inboxes[r], self._outbox),
                daemon=True,
            )
            for r in range(world_size)
        ]
        for p in self._procs:
            p.start()
        self.alive = True

    def run(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> list[Any]:
        """Run ``fn(*args, **kwargs)`` on every rank; return results in rank order."""
        for box in self._inboxes:
            box.put((fn, args, kwargs))
        results: dict[int, Any] = {}
        failures: dict[int, str] = {}
        for _ in range(self.world_size):
            rank, ok, value = self._outbox.get(timeout=RESULT_TIMEOUT_S)
            (results if ok else failures)[rank] = value
        if failures:
            self.close()
            detail = "\n".join(f"--- rank {r} ---\n{tb}" for r, tb in sorted(failures.items()))
            raise RankFailed(f"{fn.__name__} failed on ranks {sorted(failures)}:\n{detail}")
        return [results[r] for r in range(self.world_size)]

    def close(self) -> None:
        """Stop the ranks (by the PIDs this pool started) and forget them."""
        if not self.alive:
            return
        self.alive = False
        for box in self._inboxes:
            box.put(None)
        for p in self._procs:
            p.join(timeout=5)
            if p.is_alive():
                p.kill()
                p.join()


_pools: dict[int, DistPool] = {}


def get_pool(world_size: int) -> DistPool:
    """The live pool of ``world_size`` ranks, started on first use."""
    pool = _pools.get(world_size)
    if pool is None or not pool.alive:
        pool = _pools[world_size] = DistPool(world_size)
    return pool


def close_pools() -> None:
    for pool in _pools.values():
        pool.close()
    _pools.clear()
