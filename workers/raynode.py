"""A Ray worker pod of a ``runtime: ray`` generation: join the head, host ranks, leave with it.

    python -m shardwright.workers.raynode HEAD_HOST:PORT [ray start options ...]

Waits until the head's Ray port answers, then runs ``ray start --address=HEAD_HOST:PORT
--block`` with the given options (the operator passes ``--resources`` naming this pod, so
the driver in the head pins this pod's ranks here; see operator/backends/raypods.py).

The node leaves (stops Ray, exits 0) once the head has not answered for ``LEAVE_AFTER_S``:
the generation is over, finished, failed or stopped, and the head pod's exit says which.
SIGTERM alone does not end the node: when a generation is stopped the head gets SIGTERM
too, its driver asks the ranks here to write a checkpoint and exit, and they need this node
until then. If Ray's processes exit on their own, the pod exits with their code: this node
is lost to the generation.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

#: Seconds the head may go unanswered before this node leaves.
LEAVE_AFTER_S = 3.0
#: Seconds between checks of the head's port.
CHECK_S = 0.5


def start_ray(*options: str) -> subprocess.Popen:
    """``ray start --block OPTIONS...`` by this interpreter (whatever PATH holds); the head's
    driver starts the head with it too. SIGTERM ends it and the Ray processes it started at
    once: Ray would first drain the node for 30 s, for nothing, as the ranks are done."""
    env = {**os.environ, "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0"}
    return subprocess.Popen([sys.executable, "-m", "ray.scripts.scripts", "start", "--block", *options], env=env)


def answers(host: str, port: int) -> bool:
    """True if something accepts a TCP connection at ``host:port`` now."""
    try:
        with socket.create_connection((host, port), timeout=CHECK_S):
            return True
    except OSError:  # refused, unreachable, or the head's name is gone from DNS
        return False


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args or ":" not in args[0]:
        print("usage: python -m shardwright.workers.raynode HEAD_HOST:PORT [ray start options ...]", file=sys.stderr)
        return 2
    address, options = args[0], args[1:]
    host, _, port = address.rpartition(":")
    terminated = False

    def on_term(*_) -> None:
        nonlocal terminated
        terminated = True

    signal.signal(signal.SIGTERM, on_term)
    while not answers(host, int(port)):
        if terminated:
            return 0  # stopped before the head ever came up: nothing runs here
        time.sleep(CHECK_S)
    node = start_ray(f"--address={address}", *options)
    silent_since = None
    while (code := node.poll()) is None:
        time.sleep(CHECK_S)
        if answers(host, int(port)):
            silent_since = None
            continue
        silent_since = silent_since or time.monotonic()
        if time.monotonic() - silent_since >= LEAVE_AFTER_S:
            node.terminate()
            node.wait()
            return 0
    return code


if __name__ == "__main__":
    sys.exit(main())
