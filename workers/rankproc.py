"""A rank's own process, driven by the process that started it (torchrun's agent and worker).

The parent (a Ray actor, see operator/backends/local.py) keeps a ``RankProcess``; the child
runs ``python -m shardwright.workers.rankproc FD MODULE``, imports ``MODULE`` (torch) at
once and then runs one job at a time on its main thread, each handed over the socket
``FD``: ``(entry, config_json, environ)``, answered with what ``entry`` returned or the
exception it raised. ``"stop"`` on the same socket sets the running job's stop event.

Why a child rather than the actor itself: a Ray actor process carries Ray's core worker
(its gRPC threads, a signal check that wakes the process every 10 ms) and runs calls on
its own threads; a rank's step is a few milliseconds of two ranks in lockstep on busy
cores, and a plain process keeps all of that out of it. The child has a session of its
own (Ctrl-C in a terminal signals the parent's process group; the stop comes through the
parent) and ends when the socket closes, so a killed parent leaves no rank behind.
"""

from __future__ import annotations

import importlib
import os
import queue
import socket
import subprocess
import sys
import threading
import traceback
from multiprocessing.connection import Connection
from typing import Any

#: Seconds between checks that the child still lives while a job runs.
POLL_S = 0.5


class RankProcessExited(RuntimeError):
    """The child ended without answering its job: killed, crashed, or ``os._exit``."""

    def __init__(self, code: int | None) -> None:
        self.code = code
        self.how = f"killed by signal {-code}" if code is not None and code < 0 else f"exit code {code}"
        super().__init__(f"rank process ended ({self.how})")

    def __reduce__(self):  # raised in a Ray actor, read in the driver
        return type(self), (self.code,)


class RankProcess:
    """The parent's handle: start the child, hand it jobs, ask it to stop."""

    def __init__(self, module: str) -> None:
        ours, theirs = socket.socketpair()
        self.conn = Connection(ours.detach())
        self.child = subprocess.Popen(
            [sys.executable, "-m", __name__, str(theirs.fileno()), module],
            pass_fds=(theirs.fileno(),),
            start_new_session=True,  # Ctrl-C in a terminal signals the parent's group, not this one
        )
        theirs.close()

    @property
    def pid(self) -> int:
        return self.child.pid

    def alive(self) -> bool:
        return self.child.poll() is None

    def run(self, entry: str, config_json: str, environ: dict[str, str]) -> Any:
        """Run ``entry`` in the child; its return value, or the exception it raised."""
        try:
            self.conn.send((entry, config_json, environ))
            # A dead child's end of the socket reads as closed; the liveness check is for a
            # child whose socket some process it started still holds.
            while not self.conn.poll(POLL_S) and self.alive():
                pass
            ok, value = self.conn.recv() if self.conn.poll() else (None, None)
        except (EOFError, OSError):  # it died with the answer unsent
            ok = None
        if ok is None:
            raise RankProcessExited(self.child.wait())
        if not ok:
            raise value
        return value

    def request_stop(self) -> None:
        try:
            self.conn.send("stop")
        except OSError:  # already gone: nothing to stop
            pass

    def close(self) -> None:
        self.conn.close()
        self.child.kill()
        self.child.wait()


def _picklable(error: BaseException) -> BaseException:
    """``error`` itself if it survives pickling, else a RuntimeError that says the same."""
    import pickle

    try:
        pickle.loads(pickle.dumps(error))
        return error
    except Exception:
        return RuntimeError(f"{type(error).__name__}: {error}")


def serve(fd: int, module: str) -> None:
    """The child's loop: jobs in order on this (the main) thread, stops from a reader thread."""
    conn = Connection(fd)
    importlib.import_module(module)
    jobs: queue.SimpleQueue = queue.SimpleQueue()
    stop = threading.Event()

    def read() -> None:
        while True:
            try:
                message = conn.recv()
            except (EOFError, OSError):  # the parent is gone: so is this rank
                os._exit(1)
            if message == "stop":
                stop.set()
            else:
                jobs.put(message)

    threading.Thread(target=read, name="rank-control", daemon=True).start()
    while True:
        entry, config_json, environ = jobs.get()
        stop.clear()
        os.environ.update(environ)
        name, func = entry.split(":")
        try:
            answer = (True, getattr(importlib.import_module(name), func)(config_json, None, stop))
        except Exception as e:
            traceback.print_exc()  # the whole story goes to the rank's log; the parent gets the error
            answer = (False, _picklable(e))
        conn.send(answer)


if __name__ == "__main__":
    serve(int(sys.argv[1]), sys.argv[2])
