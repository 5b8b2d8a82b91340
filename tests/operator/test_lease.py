"""Leader election: one holder at a time; a stale holder is replaced after the duration; a
leader that loses the Lease stops. (A Lease that answers 500: test_api_faults.py.)"""

from __future__ import annotations

import asyncio
import datetime

import pytest
from kubernetes import client

from shardwright.operator import handlers
from shardwright.operator.lease import LeaderLease, LeaseLost, LeaseSettings

from .kubeapi import FAST, LEASES, PODS, create_job, eventually, get, live, never, pods_of, tiny_job

pytestmark = pytest.mark.cluster


def test_one_leader_and_takeover_after_expiry(cluster):
    api = handlers.api_client()
    ns = cluster.namespace
    first = LeaderLease(api, LeaseSettings(namespace=ns, identity="a", duration_s=15))
    second = LeaderLease(api, LeaseSettings(namespace=ns, identity="b", duration_s=15))
    assert first.try_acquire() is True
    assert second.try_acquire() is False  # held and fresh
    assert first.try_acquire() is True  # renewal
    # Make a's renewal look 30 s old: b may take over.
    coordination = client.CoordinationV1Api(api)
    stale = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(seconds=30)
    coordination.patch_namespaced_lease("shardwright-operator", ns, {"spec": {"renewTime": stale.isoformat()}})
    assert second.try_acquire() is True
    held = coordination.read_namespaced_lease("shardwright-operator", ns).spec
    assert held.holder_identity == "b" and held.lease_transitions == 1


async def test_a_leader_whose_lease_is_taken_over_stops(cluster):
    """The leader stops reconciling and ``serve`` raises (the process exits non-zero) when
    another candidate holds the Lease at its next renewal; a job created afterwards gets no
    pods from it."""
    ns = cluster.namespace
    leader = LeaderLease(handlers.api_client(), LeaseSettings(namespace=ns, identity="a", duration_s=2, renew_s=0.1))
    serving = asyncio.create_task(handlers.serve(FAST, namespaces=[ns], liveness_endpoint=None, metrics_port=None, lease=leader))
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
