"""Free TCP ports for rendezvous and telemetry on this machine."""

from __future__ import annotations

import random
import socket
from pathlib import Path

#: Where ports are drawn: above Ray's worker ports (10002-19999), below the usual ephemeral
#: range; ``free_port`` stops at the kernel's actual floor.
PORT_RANGE = (20000, 32768)
EPHEMERAL_RANGE_FILE = Path("/proc/sys/net/ipv4/ip_local_port_range")
#: Ports tried in the range before falling back to any free port.
TRIES = 64


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free right now on ``host``, which its user binds seconds later.

    Drawn below the kernel's ephemeral range: a port from that range can be taken in the
    meantime by any outgoing connection (Ray opens many), and the later bind then fails
    with EADDRINUSE (it did: a rank's rendezvous store, in CI)."""
    low, high = PORT_RANGE[0], min(PORT_RANGE[1], ephemeral_floor())
    for port in random.Random().sample(range(low, high), min(TRIES, max(high - low, 0))):
        with socket.socket() as s:
            try:
                s.bind((host, port))
            except OSError:
                continue
            return port
    with socket.socket() as s:  # no room below the ephemeral range: any free port
        s.bind((host, 0))
        return s.getsockname()[1]


def ephemeral_floor() -> int:
    """The lowest port the kernel hands to outgoing connections."""
    try:
        return int(EPHEMERAL_RANGE_FILE.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return PORT_RANGE[1]
