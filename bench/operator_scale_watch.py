"""What the scale harness reads from the API server: a watch of one resource in a thread
(resumed from its resourceVersion, listed again on 410 Gone), and the API server's own
request-latency histogram from its ``/metrics``."""

from __future__ import annotations

import json
import re
import threading
import urllib.parse
import time
from collections.abc import Callable

import urllib3

from tests.operator.kubeapi import Api

#: ``apiserver_request_duration_seconds_bucket{...,verb="GET",...,le="0.05"} 123``
_BUCKET = re.compile(r'^apiserver_request_duration_seconds_bucket\{(?P<labels>[^}]*)\} (?P<count>\S+)$')


class Watch(threading.Thread):
    """``on_event(type, object, monotonic time received)`` for every event of ``where``
    (a collection path) matching ``selector``, from a list first, until :meth:`stop`."""

    def __init__(self, api: Api, where: str, selector: str, on_event: Callable[[str, dict, float], None]) -> None:
        super().__init__(daemon=True, name=f"watch {where}")
        self.api, self.where, self.selector, self.on_event = api, where, selector, on_event
        self.http = urllib3.PoolManager(ca_certs=api.http.connection_pool_kw["ca_certs"])
        self.stopped = threading.Event()
        self.synced = threading.Event()

    def stop(self) -> None:
        self.stopped.set()

    def run(self) -> None:
        version = None
        while not self.stopped.is_set():
            if version is None:
                listed = self.api.request("GET", self.where, params={"labelSelector": self.selector})
                now = time.monotonic()
                for obj in listed["items"]:
                    self.on_event("ADDED", obj, now)
                version = listed["metadata"]["resourceVersion"]
                self.synced.set()
            version = self._stream(version)

    def _stream(self, version: str) -> str | None:
        """Events from ``version`` on until the server ends the watch; the version to resume
        from (None: list again)."""
        params = {"watch": "1", "labelSelector": self.selector, "resourceVersion": version,
                  "allowWatchBookmarks": "true", "timeoutSeconds": "30"}
        url = self.api.server + self.where + "?" + urllib.parse.urlencode(params)
        try:
            r = self.http.request("GET", url, headers=self.api.headers, preload_content=False,
                                  timeout=urllib3.Timeout(connect=10, read=60))
        except urllib3.exceptions.HTTPError:
            time.sleep(0.5)
            return version
        buffer = b""
        try:
            for chunk in r.stream(2**16):
                buffer += chunk
                *lines, buffer = buffer.split(b"\n")
                for line in lines:
                    event = json.loads(line)
                    if event["type"] == "ERROR":
                        return None  # 410 Gone: too old a version
                    version = event["object"]["metadata"]["resourceVersion"]
                    if event["type"] != "BOOKMARK":
                        self.on_event(event["type"], event["object"], time.monotonic())
                if self.stopped.is_set():
                    break
        except urllib3.exceptions.HTTPError:
            pass
        finally:
            r.release_conn()
        return version


def request_latency_buckets(api: Api) -> dict[float, float]:
    """The API server's request-latency histogram, every resource and verb summed, watches
    (and other long-running requests) left out: cumulative count per bucket bound."""
    r = api.http.request("GET", api.server + "/metrics", headers=api.headers)
    out: dict[float, float] = {}
    for line in r.data.decode().splitlines():
        if not (m := _BUCKET.match(line)):
            continue
        labels = dict(re.findall(r'(\w+)="([^"]*)"', m["labels"]))
        if labels.get("verb") in ("WATCH", "CONNECT", "WATCHLIST"):
            continue
        le = float("inf") if labels["le"] == "+Inf" else float(labels["le"])
        out[le] = out.get(le, 0.0) + float(m["count"])
    return out


def histogram_quantile(q: float, before: dict[float, float], after: dict[float, float]) -> float:
    """Prometheus' ``histogram_quantile`` over the requests between two scrapes: linear
    within the bucket holding the quantile (the bound itself when it is the last finite one)."""
    bounds = sorted(after)
    counts = [after[b] - before.get(b, 0.0) for b in bounds]
    total = counts[-1] if counts else 0.0
    if total <= 0:
        return float("nan")
    rank, lower, below = q * total, 0.0, 0.0
    for bound, cumulative in zip(bounds, counts):
        if cumulative >= rank:
            if bound == float("inf"):
                return lower
            return lower + (bound - lower) * (rank - below) / max(cumulative - below, 1e-12)
        lower, below = bound, cumulative
    return lower


def requests_between(before: dict[float, float], after: dict[float, float]) -> float:
    """Requests the API server answered between the two scrapes (watches left out)."""
    return after.get(float("inf"), 0.0) - before.get(float("inf"), 0.0)


def percentile(values: list[float], q: float) -> float:
    """The ``q`` quantile (nearest rank) of ``values``; NaN for none."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")
