"""The replicas the router knows, and whether each may take a request now.

A replica is *routable* only when all three hold: the pool registered it (``register``; the
pool does so once the replica's process is up), the router's own last probe of its
``/status`` found it serving (a replica warms up before it listens, so a serving answer
means warmed), and the pool has not routed it away (``route_away``, the first step of a
drain). A replica that just started is none of these. A failed request marks its replica
unprobed at once, so a retry or a migration never picks it again before a probe finds it
serving.
"""

from __future__ import annotations

import dataclasses
import json
import threading
import urllib.error
import urllib.request
from collections.abc import Callable

from .plugins import Candidate


@dataclasses.dataclass
class Endpoint:
    name: str
    url: str
    #: The router's last probe found it serving (warmed, not draining, engine up).
    serving: bool = False
    #: The pool routed it away (before a drain): it finishes what it has and gets nothing new.
    routed_away: bool = False
    #: Requests the router has open there.
    in_flight: int = 0
    #: What the replica last reported waiting in its own queue.
    waiting: int = 0
    #: Probes (or requests) in a row that failed.
    failures: int = 0
    #: The replica's last /status, for the pool's observation.
    status: dict | None = None

    @property
    def routable(self) -> bool:
        return self.serving and not self.routed_away

    def candidate(self) -> Candidate:
        return Candidate(self.name, self.routable, self.in_flight + self.waiting)


def probe_status(url: str, timeout: float) -> dict | None:
    """A replica's ``/status``, None when it does not answer in ``timeout`` seconds."""
    try:
        with urllib.request.urlopen(f"{url}/status", timeout=timeout) as resp:
            body = json.loads(resp.read())
    except (OSError, ValueError, urllib.error.URLError):
        return None
    return body if isinstance(body, dict) else None


class Endpoints:
    """The registry: thread-safe, probed by ``probe_all`` (the router's prober thread calls it)."""

    def __init__(self, probe: Callable[[str, float], dict | None] = probe_status, probe_timeout_s: float = 1.0) -> None:
        self._lock = threading.Lock()
        self._by_name: dict[str, Endpoint] = {}
        self._probe, self._timeout = probe, probe_timeout_s
        #: Notified when an endpoint becomes routable (held requests wait on it).
        self.changed = threading.Condition(self._lock)

    def register(self, name: str, url: str) -> None:
        """Known from now on; routable after the next probe that finds it serving."""
        with self._lock:
            ep = self._by_name.get(name)
            if ep is None or ep.url != url:
                self._by_name[name] = Endpoint(name, url.rstrip("/"))

    def route_away(self, name: str) -> None:
        with self._lock:
            if ep := self._by_name.get(name):
                ep.routed_away = True

    def remove(self, name: str) -> None:
        with self._lock:
            self._by_name.pop(name, None)

    def get(self, name: str) -> Endpoint | None:
        with self._lock:
            return self._by_name.get(name)

    def snapshot(self) -> list[Endpoint]:
        with self._lock:
            return [dataclasses.replace(ep) for ep in self._by_name.values()]

    def candidates(self) -> list[Candidate]:
        with self._lock:
            return [ep.candidate() for ep in self._by_name.values()]

    def routable(self) -> list[str]:
        with self._lock:
            return sorted(ep.name for ep in self._by_name.values() if ep.routable)

    def opened(self, name: str) -> None:
        with self._lock:
            if ep := self._by_name.get(name):
                ep.in_flight += 1

    def closed(self, name: str, *, failed: bool) -> None:
        with self._lock:
            if ep := self._by_name.get(name):
                ep.in_flight -= 1
                if failed:  # not routable again until a probe finds it serving
                    ep.serving, ep.failures = False, ep.failures + 1

    def probe_all(self) -> None:
        for ep in self.snapshot():
            status = self._probe(ep.url, self._timeout)
            with self._lock:
                live = self._by_name.get(ep.name)
                if live is None or live.url != ep.url:
                    continue  # removed or replaced while probing
                live.status = status
                live.serving = status is not None and status.get("state") == "serving"
                live.failures = 0 if live.serving else live.failures + 1
                live.waiting = int(status.get("waiting") or 0) if status else 0
                if live.routable:
                    self.changed.notify_all()
