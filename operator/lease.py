"""Leader election on a ``coordination.k8s.io/v1`` Lease (Kopf's peering only pauses
operators, it does not elect one), fenced as client-go's leaderelection is.

``shardwright operator`` acquires the Lease before it starts Kopf and renews it in the
background. It stops leading, stops Kopf and exits non-zero (the Deployment starts a fresh
candidate) as soon as a renewal finds another holder, or when no renewal has succeeded
within the renew deadline (two thirds of the lease's duration, as client-go's defaults of
15 s and 10 s; counted from when the last good renewal was *sent*). Every Lease request has a timeout, and a renewal that hangs is given
up at the deadline, so a leader cut off from the API server stops on time.

A candidate judges expiry by its own clock, as client-go does: a Lease is expired once its
record (holder, renewTime, resourceVersion) has not changed for the lease's duration since
this candidate *observed* it, never from the holder's ``renewTime`` (clocks may differ).
So a leader has stopped (two thirds of the duration after it sent its last renewal; the
last third is for Kopf to wind down) before any candidate takes over (at least the whole
duration after that renewal was written).
A leader that exits cleanly releases the Lease (holder cleared), and a candidate takes a
released Lease at once.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import logging
import socket
import threading
import time

from kubernetes import client
from kubernetes.client.exceptions import ApiException

log = logging.getLogger(__name__)
#: Seconds one Lease request may take before it counts as failed.
REQUEST_TIMEOUT_S = 5.0


class LeaseLost(Exception):
    """We stopped leading: another candidate holds the Lease, or renewals kept failing."""


class FencedApiClient(client.ApiClient):
    """The operator's Kubernetes client. Every request has a timeout (a hung connection
    never stalls a job's loop for good). Once ``fence`` is set (the Lease is lost) every
    request fails before it is sent: a reconcile pass still running in a thread cannot act
    for a former leader while Kopf winds down."""

    def __init__(self, configuration: client.Configuration | None = None, *, timeout_s: float = 30.0) -> None:
        super().__init__(configuration)
        self.fence = threading.Event()
        self.timeout_s = timeout_s

    def call_api(self, method, url, header_params=None, body=None, post_params=None, _request_timeout=None):
        if self.fence.is_set():
            raise ApiException(status=0, reason="not sent: this operator no longer holds the leader Lease")
        return super().call_api(method, url, header_params, body, post_params, _request_timeout or self.timeout_s)


@dataclasses.dataclass(frozen=True)
class LeaseSettings:
    namespace: str
    name: str = "shardwright-operator"
    #: Who we are: the pod name in a cluster (downward API), else the host name.
    identity: str = dataclasses.field(default_factory=socket.gethostname)
    #: Seconds a leader may go without renewing before another candidate takes over.
    duration_s: int = 15
    #: Seconds between renewals, and between a candidate's attempts (client-go's retry
    #: period): several may fail in a row before the renew deadline.
    renew_s: float = 2.0

    @property
    def renew_deadline_s(self) -> float:
        """A leader that has not renewed for this long stops leading (before any candidate
        may take over)."""
        return self.duration_s * 2 / 3


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


class LeaderLease:
    def __init__(self, api: client.ApiClient, settings: LeaseSettings) -> None:
        self.api = client.CoordinationV1Api(api)
        self.settings = settings
        #: The Lease record as last read, and when (this process's monotonic clock) it was
        #: first seen that way: expiry is judged from that, not from the holder's clock.
        self._record: tuple | None = None
        self._observed_at = 0.0

    def try_acquire(self, timeout: float = REQUEST_TIMEOUT_S) -> bool:
        """One attempt: take a free, released or expired Lease, or renew our own. True if we
        hold it. ``timeout`` bounds each request."""
        s = self.settings
        now = _now()
        try:
            lease = self.api.read_namespaced_lease(s.name, s.namespace, _request_timeout=timeout)
        except ApiException as e:
            if e.status != 404:
                raise
            body = client.V1Lease(
                metadata=client.V1ObjectMeta(name=s.name, namespace=s.namespace),
                spec=self._spec(now, now, transitions=0),
            )
            try:
                self.api.create_namespaced_lease(s.namespace, body, _request_timeout=timeout)
                return True
            except ApiException as e2:
                if e2.status == 409:  # another candidate created it first
                    return False
                raise
        spec = lease.spec or client.V1LeaseSpec()
        holder = spec.holder_identity or None
        if holder not in (None, s.identity) and not self._expired(lease):
            return False
        ours = holder == s.identity
        new = self._spec(
            spec.acquire_time if ours and spec.acquire_time else now, now,
            transitions=(spec.lease_transitions or 0) + (0 if ours else 1),
        )
        # A merge patch carrying the resourceVersion we read: a concurrent taker makes it 409.
        body = {"spec": self.api.api_client.sanitize_for_serialization(new)}
        if lease.metadata and lease.metadata.resource_version:
            body["metadata"] = {"resourceVersion": lease.metadata.resource_version}
        try:
            self.api.patch_namespaced_lease(s.name, s.namespace, body, _request_timeout=timeout)
            return True
        except ApiException as e:
            if e.status == 409:
                return False
            raise

    def _expired(self, lease: client.V1Lease) -> bool:
        """Another holder's record unchanged for its whole duration, by our own clock."""
        spec = lease.spec
        record = (spec.holder_identity, spec.renew_time, lease.metadata.resource_version if lease.metadata else None)
        if record != self._record:
            self._record, self._observed_at = record, time.monotonic()
        duration = spec.lease_duration_seconds or self.settings.duration_s
        return time.monotonic() - self._observed_at > duration

    def _spec(self, acquired: datetime.datetime, renewed: datetime.datetime, *, transitions: int) -> client.V1LeaseSpec:
        return client.V1LeaseSpec(
            holder_identity=self.settings.identity, lease_duration_seconds=self.settings.duration_s,
            acquire_time=acquired, renew_time=renewed, lease_transitions=transitions,
        )

    async def acquire(self) -> None:
        """Wait until we lead."""
        while not await asyncio.to_thread(self._attempt):
            await asyncio.sleep(self.settings.renew_s)
        log.info(f"Leading as {self.settings.identity} (Lease {self.settings.namespace}/{self.settings.name})")

    async def hold(self, lost: asyncio.Event) -> None:
        """Renew until cancelled; set ``lost`` once we cannot be sure we still lead: at once
        when another candidate holds the Lease (or is taking it: a 409), at the renew
        deadline when renewals fail or hang."""
        s = self.settings
        last_ok = time.monotonic()  # acquire() has just succeeded
        while True:
            await asyncio.sleep(s.renew_s)
            sent = time.monotonic()
            left = last_ok + s.renew_deadline_s - sent
            try:
                attempt = asyncio.to_thread(self.try_acquire, max(min(left, REQUEST_TIMEOUT_S), 0.1))
                ours = await asyncio.wait_for(attempt, timeout=max(left, 0.0))
            except Exception as e:  # a flaky or unreachable API server: unknown this round
                log.warning(f"Lease renewal failed: {e!r}")
                ours = None
            if ours:
                last_ok = sent
                continue
            failing = time.monotonic() - last_ok
            if ours is False or failing >= s.renew_deadline_s:
                why = "another candidate holds it" if ours is False else f"no renewal for {failing:.1f}s"
                log.error(f"Lost the leader Lease {s.namespace}/{s.name} ({why}); stopping")
                lost.set()
                return

    def release(self) -> None:
        """On a clean exit: clear the holder (if still ours) so a candidate takes over at once
        instead of waiting out the duration. Best effort: a failure only costs that wait."""
        s = self.settings
        try:
            lease = self.api.read_namespaced_lease(s.name, s.namespace, _request_timeout=REQUEST_TIMEOUT_S)
            if not lease.spec or lease.spec.holder_identity != s.identity:
                return
            body = {"metadata": {"resourceVersion": lease.metadata.resource_version},
                    "spec": {"holderIdentity": None, "leaseDurationSeconds": 1, "renewTime": None, "acquireTime": None}}
            self.api.patch_namespaced_lease(s.name, s.namespace, body, _request_timeout=REQUEST_TIMEOUT_S)
            log.info(f"Released the leader Lease {s.namespace}/{s.name}")
        except Exception as e:  # noqa: BLE001 - best effort on the way out
            log.warning(f"Lease not released: {e!r}")

    def _attempt(self) -> bool:
        try:
            return self.try_acquire()
        except Exception as e:  # a flaky API server: not leading this round
            log.warning(f"Lease attempt failed: {e}")
            return False
