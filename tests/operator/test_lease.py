"""Leader election: one holder at a time; a stale holder is replaced after the duration; a
leader that loses the Lease stops."""

from __future__ import annotations

import asyncio
import datetime

import pytest
from kubernetes import client

from shardwright.operator import handlers
from shardwright.operator.lease import LeaderLease, LeaseLost, LeaseSettings

from .mockapi import FAST, NS, PODS, api, create_job, eventually, live, tiny_job

LEASES = "coordination.k8s.io/v1/leases"


async def test_one_leader_and_takeover_after_expiry(cluster):
    # KMock serves from this event loop; the blocking client runs in a thread.
    await asyncio.to_thread(elect)


def elect() -> None:
    api = handlers.api_client()
    first = LeaderLease(api, LeaseSettings(namespace="default", identity="a", duration_s=15))
    second = LeaderLease(api, LeaseSettings(namespace="default", identity="b", duration_s=15))
    assert first.try_acquire() is True
    assert second.try_acquire() is False  # held and fresh
    assert first.try_acquire() is True  # renewal
    # Make a's renewal look 30 s old: b may take over.
    coordination = client.CoordinationV1Api(api)
    stale = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(seconds=30)
    coordination.patch_namespaced_lease("shardwright-operator", "default", {"spec": {"renewTime": stale.isoformat()}})
    assert second.try_acquire() is True
    held = coordination.read_namespaced_lease("shardwright-operator", "default").spec
    assert held.holder_identity == "b" and held.lease_transitions == 1


LEASE = "/apis/coordination.k8s.io/v1/namespaces/default/leases/shardwright-operator"


@pytest.mark.parametrize("how", ["taken-over", "api-down"])
async def test_losing_the_lease_stops_the_operator(cluster, how):
    """The leader stops reconciling and ``serve`` raises (the process exits non-zero) when
    another candidate holds the Lease (at the next renewal) or when renewals fail for most of
    its duration; a job created afterwards gets no pods from it."""
    leader = LeaderLease(handlers.api_client(), LeaseSettings(namespace=NS, identity="a", duration_s=2, renew_s=0.1))
    serving = asyncio.create_task(handlers.serve(FAST, namespaces=[], liveness_endpoint=None, metrics_port=None, lease=leader))
    await create_job(cluster, tiny_job())
    await eventually(lambda: len(live(cluster, PODS)) == 2, what="the leader starts generation 1")
    assert live(cluster, LEASES)["shardwright-operator"]["spec"]["holderIdentity"] == "a"
    if how == "taken-over":
        # b took over (say a's renewals were lost for a while) and keeps renewing. KMock has
        # no resourceVersion check, so a renewal of a's in flight may overwrite b's once.
        async def b_renews() -> None:
            while True:
                now = datetime.datetime.now(datetime.timezone.utc).isoformat()
                await api(cluster, "PATCH", LEASE, {"spec": {"holderIdentity": "b", "renewTime": now, "leaseDurationSeconds": 60}})
                await asyncio.sleep(0.05)

        b = asyncio.create_task(b_renews())
    else:
        cluster[f"get {LEASE}"] << 500
        cluster[f"patch {LEASE}"] << 500
    try:
        with pytest.raises(LeaseLost):
            await asyncio.wait_for(serving, 20)
    finally:
        if how == "taken-over":
            b.cancel()
    creates = [r for r in list(cluster) if r.method == "POST" and r.url.path.endswith("/pods")]
    await create_job(cluster, tiny_job("second"))
    await asyncio.sleep(1.0)
    assert [r for r in list(cluster) if r.method == "POST" and r.url.path.endswith("/pods")] == creates
    assert sorted(live(cluster, PODS)) == ["tiny-g1-worker-0", "tiny-g1-worker-1"]
