"""Leader election: one holder at a time; a stale holder is replaced after the duration; a
leader that loses the Lease stops. (A Lease that answers 500: test_api_faults.py.)"""

from __future__ import annotations

import asyncio
import concurrent.futures
import datetime
import socket
import threading
import time

import pytest
import urllib3
from kubernetes import client

from shardwright.operator import handlers
from shardwright.operator.lease import FencedApiClient, LeaderLease, LeaseLost, LeaseSettings

from .kubeapi import FAST, PODS, create_job, eventually, get, live, never, pods_of, tiny_job
from .kubehttp import LEASES
from .test_resilience import PartitionedClient

pytestmark = pytest.mark.cluster


def test_one_leader_and_takeover_judged_by_the_candidates_own_clock(cluster):
    """Expiry as client-go judges it: the Lease's record unchanged for its duration since this
    candidate observed it. A renewTime far in the past (the holder's clock behind) is not
    expiry; the same record seen unchanged for the duration is."""
    api = handlers.api_client()
    ns = cluster.namespace
    first = LeaderLease(api, LeaseSettings(namespace=ns, identity="a", duration_s=2))
    second = LeaderLease(api, LeaseSettings(namespace=ns, identity="b", duration_s=2))
    assert first.try_acquire() is True
    assert second.try_acquire() is False  # held and fresh
    assert first.try_acquire() is True  # renewal
    coordination = client.CoordinationV1Api(api)
    skewed = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(seconds=30)
    coordination.patch_namespaced_lease("shardwright-operator", ns, {"spec": {"renewTime": skewed.isoformat()}})
    assert second.try_acquire() is False  # a record b has just seen change
    time.sleep(2.3)
    assert second.try_acquire() is True  # unchanged for 2 s by b's clock
    held = coordination.read_namespaced_lease("shardwright-operator", ns).spec
    assert held.holder_identity == "b" and held.lease_transitions == 1


async def test_a_leader_whose_lease_is_taken_over_stops(cluster):
    """The leader stops reconciling and ``serve`` raises (the process exits non-zero) when
    another candidate holds the Lease at its next renewal; a job created afterwards gets no
    pods from it."""
    ns = cluster.namespace
    leader = LeaderLease(handlers.api_client(), LeaseSettings(namespace=ns, identity="a", duration_s=2, renew_s=0.1))
    serving = asyncio.create_task(handlers.serve(FAST, namespaces=[ns], metrics_port=None, lease=leader))
    await create_job(cluster, tiny_job())
    await eventually(lambda: len(pods_of(cluster, 1)) == 2, what="the leader starts generation 1")
    assert get(cluster, LEASES, "shardwright-operator")["spec"]["holderIdentity"] == "a"

    # b took over (say a's renewals were lost for a while) and keeps renewing; a's renewals
    # carry the resourceVersion they read, so none of them can overwrite b's.
    async def b_renews() -> None:
        while True:
            now = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="microseconds")
            patch = {"spec": {"holderIdentity": "b", "renewTime": now, "leaseDurationSeconds": 60}}
            await asyncio.to_thread(cluster.api.merge, cluster.path(LEASES, "shardwright-operator"), patch)
            await asyncio.sleep(0.05)

    b = asyncio.create_task(b_renews())
    try:
        with pytest.raises(LeaseLost):
            await asyncio.wait_for(serving, 30)
    finally:
        b.cancel()
    before = {n: p["metadata"]["uid"] for n, p in live(cluster, PODS).items()}
    await create_job(cluster, tiny_job("second"))
    await never(lambda: pods_of(cluster, 1, job="second"), 1.0, "pods for a job created after the leader stopped")
    assert {n: p["metadata"]["uid"] for n, p in live(cluster, PODS).items()} == before
    assert sorted(before) == ["tiny-g1-worker-0", "tiny-g1-worker-1"]


class Candidate(LeaderLease):
    """A replica's Lease, noting when it first led and when it fenced itself (this
    process's monotonic clock)."""

    def __init__(self, api, settings: LeaseSettings) -> None:
        super().__init__(api, settings)
        self.leads_since: float | None = None
        self.fenced_at: float | None = None

    def try_acquire(self, *args, **kwargs) -> bool:
        ours = super().try_acquire(*args, **kwargs)
        if ours and self.leads_since is None:
            self.leads_since = time.monotonic()
        return ours

    async def hold(self, lost: asyncio.Event) -> None:
        await super().hold(lost)
        self.fenced_at = time.monotonic()


class Replica:
    """``shardwright operator`` with a Lease in its own thread and event loop, as a second
    pod would be (Kopf, on stopping, cancels the tasks of its event loop it did not start)."""

    def __init__(self, lease: Candidate, namespace: str) -> None:
        self.lease, self.outcome = lease, concurrent.futures.Future()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self._run, args=(namespace,), daemon=True)
        self.thread.start()

    def _run(self, namespace: str) -> None:
        serving = self.loop.create_task(handlers.serve(FAST, namespaces=[namespace], metrics_port=None, lease=self.lease))
        self.task = serving
        try:
            self.outcome.set_result(self.loop.run_until_complete(serving))
        except BaseException as e:  # noqa: BLE001 - the test reads it
            self.outcome.set_exception(e)
        finally:
            self.loop.close()

    async def ended(self, timeout: float) -> BaseException | None:
        """How ``serve`` ended (its exception, None for a return), within ``timeout``."""
        done, _ = await asyncio.wait([asyncio.wrap_future(self.outcome)], timeout=timeout)
        assert done, f"serve still running after {timeout} s"
        return self.outcome.exception()

    async def stop(self) -> BaseException | None:
        """SIGTERM: cancel ``serve`` (Kopf stops; the Lease is released if still ours)."""
        if not self.outcome.done():
            self.loop.call_soon_threadsafe(self.task.cancel)
        return await self.ended(30)


async def test_a_leader_cut_off_from_the_api_server_stops_before_the_other_replica_leads(cluster):
    """Fenced leader election (issue 17): two replicas; the leader's API traffic to the Lease
    hangs from one moment on. At its renew deadline it fences itself (no job loop runs on, no
    request of it is sent) and then stops, before the other replica takes over, which it
    does within the lease's duration of the last renewal (plus its polling). The Lease's
    history shows one handover."""
    ns, settings = cluster.namespace, {"namespace": cluster.namespace, "duration_s": 3, "renew_s": 0.2}
    cut = PartitionedClient(handlers.api_client().configuration)
    a = Replica(Candidate(cut, LeaseSettings(identity="a", **settings)), ns)
    await eventually(lambda: a.lease.leads_since, what="a leads")
    b = Replica(Candidate(handlers.api_client(), LeaseSettings(identity="b", **settings)), ns)
    holders: list[str | None] = []

    async def sample() -> None:
        while True:
            holders.append((await asyncio.to_thread(get, cluster, LEASES, "shardwright-operator"))["spec"].get("holderIdentity"))
            await asyncio.sleep(0.05)

    sampling = asyncio.create_task(sample())
    try:
        await create_job(cluster, tiny_job())
        await eventually(lambda: len(pods_of(cluster, 1)) == 2, what="a starts generation 1")
        cut.healed.clear()
        blocked = time.monotonic()
        await eventually(lambda: b.lease.leads_since, timeout=30, what="b leads")
        assert a.lease.fenced_at is not None and a.lease.fenced_at < b.lease.leads_since, (a.lease.fenced_at, b.lease.leads_since)
        assert b.lease.leads_since - blocked < 3 + 2 * 0.2 + 1.0, b.lease.leads_since - blocked
        assert isinstance(await a.ended(30), LeaseLost)
        await asyncio.sleep(0.5)
    finally:
        sampling.cancel()
        cut.healed.set()
        await asyncio.gather(a.stop(), b.stop(), sampling, return_exceptions=True)
    changes = [h for i, h in enumerate(holders) if i == 0 or h != holders[i - 1]]
    assert changes == ["a", "b"], changes
    assert get(cluster, LEASES, "shardwright-operator")["spec"]["leaseTransitions"] == 1


async def test_a_leader_that_exits_cleanly_releases_the_lease(cluster):
    """On a clean exit the leader clears the Lease's holder, and the other replica leads at
    its next attempt instead of waiting out the duration (60 s here)."""
    ns, settings = cluster.namespace, {"namespace": cluster.namespace, "duration_s": 60, "renew_s": 0.2}
    a = Replica(Candidate(handlers.api_client(), LeaseSettings(identity="a", **settings)), ns)
    await eventually(lambda: a.lease.leads_since, what="a leads")
    b = Replica(Candidate(handlers.api_client(), LeaseSettings(identity="b", **settings)), ns)
    try:
        await asyncio.sleep(0.5)
        assert b.lease.leads_since is None
        await a.stop()
        stopped = time.monotonic()
        await eventually(lambda: b.lease.leads_since, timeout=10, what="b leads")
        assert b.lease.leads_since - stopped < 2.0
    finally:
        await asyncio.gather(a.stop(), b.stop(), return_exceptions=True)


def test_the_operators_client_times_out_and_sends_nothing_once_fenced(cluster):
    """Every request of the operator's client has a timeout, and a fenced client sends none."""
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen()  # accepts connections, never answers
    try:
        configuration = client.Configuration(host=f"http://127.0.0.1:{silent.getsockname()[1]}")
        began = time.monotonic()
        with pytest.raises(urllib3.exceptions.HTTPError):
            client.CoreV1Api(FencedApiClient(configuration, timeout_s=0.5)).list_namespace()
        assert time.monotonic() - began < 5
    finally:
        silent.close()
    api = FencedApiClient(handlers.api_client().configuration)
    assert client.CoreV1Api(api).read_namespace(cluster.namespace).metadata.name == cluster.namespace
    api.fence.set()
    with pytest.raises(client.exceptions.ApiException, match="no longer holds the leader Lease"):
        client.CoreV1Api(api).read_namespace(cluster.namespace)
