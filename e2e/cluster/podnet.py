"""The pod network of process-backed nodes: one network namespace per pod on one bridge.

As a CNI plugin does: each pod gets its own network namespace (its own localhost and ports)
with one veth into a bridge that this agent owns, and one IP from the agent's /16, so pods
reach each other, and this machine reaches them, at their pod IPs; EndpointSlices accept
those addresses (they refuse loopback ones), so Services and webhooks route to pods as on a
real cluster. Nothing leaves the machine: the pods' namespaces have no default route, and
an `unreachable` route for the /16 stays behind the bridge's own.

The API server listens on this machine's 127.0.0.1 only; each pod's 127.0.0.1 at the same
port is forwarded to it (:class:`ApiForwarder`), so in-cluster clients find it through
``KUBERNETES_SERVICE_HOST=127.0.0.1``.
"""

from __future__ import annotations

import contextlib
import ctypes
import ipaddress
import os
import socket
import subprocess
import threading
from pathlib import Path

CLONE_NEWNET = 0x40000000
#: Subnets tried in turn, one per agent on this machine: 10.240.0.0/16 ... 10.249.0.0/16.
FIRST_SUBNET, SUBNETS = 240, 10
#: Which agent (pid) owns network n: ``<OWNERS>/<n>.pid``.
OWNERS = Path("/run/shardwright-podnet")


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30, check=check)


class PodNetwork:
    """A bridge and a /16 owned by one agent; pods' namespaces hang off it."""

    def __init__(self) -> None:
        OWNERS.mkdir(parents=True, exist_ok=True)
        for n in range(SUBNETS):
            self.bridge = f"swbr{n}"
            _reclaim(n)
            if ip("link", "add", self.bridge, "type", "bridge", check=False).returncode == 0:
                (OWNERS / f"{n}.pid").write_text(str(os.getpid()))
                break
        else:
            raise RuntimeError(f"no free pod network: bridges swbr0..swbr{SUBNETS - 1} all belong to running agents")
        self.index = n
        self.subnet = ipaddress.ip_network(f"10.{FIRST_SUBNET + n}.0.0/16")
        self.gateway = str(self.subnet.network_address + 1)
        self.prefix = f"sw{n}-"
        ip("addr", "add", f"{self.gateway}/16", "dev", self.bridge)
        ip("link", "set", self.bridge, "up")
        ip("route", "add", "unreachable", str(self.subnet), "metric", "4000", check=False)
        self.next = 0
        self.forwarders: dict[str, ApiForwarder] = {}

    def add(self, key: str, api_port: int) -> tuple[str, str]:
        """A namespace for pod ``key`` (a short unique id): returns (its path, its IP)."""
        self.next += 1
        k = self.next
        addr = str(self.subnet.network_address + 256 * (1 + k // 250) + (k % 250 + 2))
        name = f"{self.prefix}{key}"
        host_end = f"sw{self.index}{key}"[:15]
        ip("netns", "add", name)
        ip("link", "add", host_end, "type", "veth", "peer", "name", "eth0", "netns", name)
        ip("link", "set", host_end, "master", self.bridge, "up")
        ip("-n", name, "addr", "add", f"{addr}/16", "dev", "eth0")
        ip("-n", name, "link", "set", "eth0", "up")
        ip("-n", name, "link", "set", "lo", "up")
        path = f"/run/netns/{name}"
        self.forwarders[name] = ApiForwarder(path, api_port)
        return path, addr

    def remove(self, path: str) -> None:
        name = Path(path).name
        if (fwd := self.forwarders.pop(name, None)) is not None:
            fwd.close()
        ip("netns", "del", name, check=False)  # its veth goes with it

    def close(self) -> None:
        for path in [f"/run/netns/{n}" for n in list(self.forwarders)]:
            self.remove(path)
        ip("link", "del", self.bridge, check=False)
        ip("route", "del", "unreachable", str(self.subnet), "metric", "4000", check=False)
        (OWNERS / f"{self.index}.pid").unlink(missing_ok=True)


def _reclaim(n: int) -> None:
    """Take down network ``n`` if the agent that made it is gone (killed, not stopped)."""
    owner = OWNERS / f"{n}.pid"
    try:
        pid = int(owner.read_text())
        os.kill(pid, 0)
        return  # alive: not ours to take
    except (OSError, ValueError):
        pass
    for name in ip("netns", "list").stdout.split():
        if name.startswith(f"sw{n}-"):
            ip("netns", "del", name, check=False)
    ip("link", "del", f"swbr{n}", check=False)
    ip("route", "del", "unreachable", f"10.{FIRST_SUBNET + n}.0.0/16", "metric", "4000", check=False)
    owner.unlink(missing_ok=True)


_libc = ctypes.CDLL("libc.so.6", use_errno=True)
_setns_lock = threading.Lock()


@contextlib.contextmanager
def _inside(netns: str):
    """Run the block's socket calls in network namespace ``netns`` (this thread only)."""
    with _setns_lock:
        home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
        target = os.open(netns, os.O_RDONLY)
        try:
            if _libc.setns(target, CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), f"setns({netns})")
            try:
                yield
            finally:
                if _libc.setns(home, CLONE_NEWNET) != 0:
                    raise OSError(ctypes.get_errno(), "setns back to this machine's network")
        finally:
            os.close(home)
            os.close(target)


class ApiForwarder:
    """127.0.0.1:``port`` inside one pod's namespace, forwarded to 127.0.0.1:``port`` here."""

    def __init__(self, netns: str, port: int) -> None:
        self.port = port
        with _inside(netns):
            self.listener = socket.socket()
            self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self.listener.bind(("127.0.0.1", port))
            self.listener.listen(64)
        threading.Thread(target=self._accept, daemon=True, name=f"api-forward {netns}").start()

    def _accept(self) -> None:
        while True:
            try:
                inner, _ = self.listener.accept()
            except OSError:
                return  # closed
            try:
                outer = socket.create_connection(("127.0.0.1", self.port), timeout=10)
            except OSError:
                inner.close()
                continue
            outer.settimeout(None)
            for a, b in ((inner, outer), (outer, inner)):
                threading.Thread(target=_pump, args=(a, b), daemon=True).start()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.listener.close()


def _pump(src: socket.socket, dst: socket.socket) -> None:
    try:
        while data := src.recv(65536):
            dst.sendall(data)
    except OSError:
        pass
    finally:  # half-close: the other direction may still be talking; both close with their threads
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)
