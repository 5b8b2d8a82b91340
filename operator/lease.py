"""Leader election on a ``coordination.k8s.io/v1`` Lease (Kopf's peering only pauses
operators, it does not elect one).

``shardwright operator`` acquires the Lease before it starts Kopf and renews it in the
background. It stops leading, stops Kopf and exits non-zero (the Deployment starts a fresh
candidate) as soon as a renewal finds another holder, or when renewals have failed for 80%
of the lease's duration: a candidate takes over only after the whole duration, so the old
leader has stopped by then. Times are compared from the Lease's own ``renewTime``, so
candidates need only roughly synced clocks.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import logging
import socket

from kubernetes import client
from kubernetes.client.exceptions import ApiException

log = logging.getLogger(__name__)


class LeaseLost(Exception):
    """We stopped leading: another candidate holds the Lease, or renewals kept failing."""


@dataclasses.dataclass(frozen=True)
class LeaseSettings:
    namespace: str
    name: str = "shardwright-operator"
    #: Who we are: the pod name in a cluster (downward API), else the host name.
    identity: str = dataclasses.field(default_factory=socket.gethostname)
    #: Seconds a leader may go without renewing before another candidate takes over.
    duration_s: int = 15
    #: Seconds between renewals (well below ``duration_s``: two may fail in a row).
    renew_s: float = 5.0


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


class LeaderLease:
    def __init__(self, api: client.ApiClient, settings: LeaseSettings) -> None:
        self.api = client.CoordinationV1Api(api)
        self.settings = settings

    def try_acquire(self) -> bool:
        """One attempt: take a free or expired Lease, or renew our own. True if we hold it."""
        s = self.settings
        now = _now()
        try:
            lease = self.api.read_namespaced_lease(s.name, s.namespace)
        except ApiException as e:
            if e.status != 404:
                raise
            body = client.V1Lease(
                metadata=client.V1ObjectMeta(name=s.name, namespace=s.namespace),
                spec=self._spec(now, now, transitions=0),
            )
            try:
                self.api.create_namespaced_lease(s.namespace, body)
                return True
            except ApiException as e2:
                if e2.status == 409:  # another candidate created it first
                    return False
                raise
        spec = lease.spec or client.V1LeaseSpec()
        holder, renewed = spec.holder_identity, spec.renew_time
        duration = spec.lease_duration_seconds or s.duration_s
        expired = renewed is None or (now - renewed).total_seconds() > duration
        if holder not in (None, s.identity) and not expired:
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
            self.api.patch_namespaced_lease(s.name, s.namespace, body)
            return True
        except ApiException as e:
            if e.status == 409:
                return False
            raise

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
        when another candidate holds the Lease (or is taking it: a 409), after 80% of the
        duration when the API server does not answer."""
        s = self.settings
        last_ok = _now()
        while True:
            await asyncio.sleep(s.renew_s)
            try:
                ours = await asyncio.to_thread(self.try_acquire)
            except Exception as e:  # a flaky API server: unknown this round
                log.warning(f"Lease renewal failed: {e}")
                ours = None
            if ours:
                last_ok = _now()
                continue
            failing = (_now() - last_ok).total_seconds()
            if ours is False or failing > s.duration_s * 0.8:
                why = "another candidate holds it" if ours is False else f"no renewal for {failing:.1f}s"
                log.error(f"Lost the leader Lease {s.namespace}/{s.name} ({why}); stopping")
                lost.set()
                return

    def _attempt(self) -> bool:
        try:
            return self.try_acquire()
        except Exception as e:  # a flaky API server: not leading this round
            log.warning(f"Lease attempt failed: {e}")
            return False
