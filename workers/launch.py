"""The worker pod's entry point: one rank process per local rank, like a tiny torchrun.

    python -m shardwright.workers.launch

Reads the pod env the operator renders: ``RANK`` (the pod's first rank), ``WORLD_SIZE``,
``LOCAL_WORLD_SIZE``, ``MASTER_ADDR``/``MASTER_PORT``, ``SHARDWRIGHT_TELEMETRY_PORT`` (local
rank i serves on port + i) and the worker config in ``SHARDWRIGHT_WORKER_CONFIG``. Each
child gets ``RANK = first + i`` and ``LOCAL_RANK = i``. With ``spec.workers[].command`` each
child runs that program instead of the trainer (``usercommand.py``); its exit code is the
rank's. SIGTERM (pod deletion, suspend) is forwarded: the ranks checkpoint at the next step
and exit 0. The pod exits with the worst child's code, so the operator sees why a rank
failed; if one child fails, the others are ended (their collectives could only time out).
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import sys
import threading
import traceback
from collections.abc import Callable

from .config import CONFIG_ENV, TELEMETRY_PORT_ENV, RankEnv, WorkerConfig


def child_environ(environ: dict[str, str], local_rank: int) -> dict[str, str]:
    """The torch env contract of local rank ``local_rank`` in this pod."""
    out = dict(environ)
    out["RANK"] = str(int(environ["RANK"]) + local_rank)
    out["LOCAL_RANK"] = str(local_rank)
    if TELEMETRY_PORT_ENV in environ:
        out[TELEMETRY_PORT_ENV] = str(int(environ[TELEMETRY_PORT_ENV]) + local_rank)
    return out


def ends_at_once_on_failure(run: Callable[[], None]) -> None:
    """Run a rank; if it raises, print why and end the process at once. A normal exit
    joins every non-daemon thread first, and after a peer died one of them can be blocked
    in a collective with it (DCP's asynchronous save): the pod then outlived the failure by
    its whole grace period (120 s in the cluster chaos run) and held the next generation back."""
    try:
        run()
    except SystemExit:
        raise
    except BaseException:
        traceback.print_exc()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(1)


def _rank_main(environ: dict[str, str], stop: multiprocessing.synchronize.Event) -> None:
    ends_at_once_on_failure(lambda: _run_rank(environ, stop))


def _run_rank(environ: dict[str, str], stop: multiprocessing.synchronize.Event) -> None:
    os.environ.update(environ)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # the parent asks through ``stop``
    flag = threading.Event()
    threading.Thread(target=lambda: (stop.wait(), flag.set()), daemon=True).start()
    if WorkerConfig.model_validate_json(environ[CONFIG_ENV]).command is None:
        from . import train  # torch is imported in the rank process only

        train.main(environ[CONFIG_ENV], RankEnv.from_environ(environ), flag)
    else:  # spec.workers[].command: the user's program, as a child with this rank's environment
        from . import usercommand

        try:
            usercommand.main(environ[CONFIG_ENV], RankEnv.from_environ(environ), flag)
        except usercommand.CommandFailed as e:
            print(f"rank {environ['RANK']}: {e}", file=sys.stderr, flush=True)
            sys.exit(e.code if 0 < e.code < 256 else 128 + abs(e.code))


def worst(codes: list[int | None]) -> int:
    """The pod's exit code: 0 only if every rank exited 0; else the first non-zero code."""
    bad = [c if c is not None and c >= 0 else 128 + abs(c or 9) for c in codes if c != 0]
    return bad[0] if bad else 0


def main(environ: dict[str, str] | None = None) -> int:
    env = dict(os.environ if environ is None else environ)
    local = int(env.get("LOCAL_WORLD_SIZE", "1"))
    ctx = multiprocessing.get_context("spawn")
    stop = ctx.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    children = [ctx.Process(target=_rank_main, args=(child_environ(env, i), stop), name=f"rank-{i}") for i in range(local)]
    for child in children:
        child.start()
    while any(c.is_alive() for c in children):
        for child in children:
            child.join(timeout=0.5)
            if child.exitcode not in (None, 0):  # one rank failed: the others cannot finish
                for other in children:
                    if other.is_alive():
                        other.terminate()
    return worst([c.exitcode for c in children])


if __name__ == "__main__":
    sys.exit(main())
