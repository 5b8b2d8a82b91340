"""Leader election: one holder at a time; a stale holder is replaced after the duration."""

from __future__ import annotations

import asyncio
import datetime

from kubernetes import client

from shardwright.operator import handlers
from shardwright.operator.lease import LeaderLease, LeaseSettings


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
