"""API faults on cue, on KMock: each test here needs answers that a real API server cannot be
made to give (its reason is the first line of its docstring). Everything else about the
operator is tested on the local control plane."""

from __future__ import annotations

import asyncio

import pytest

from shardwright.operator import handlers
from shardwright.operator.lease import LeaderLease, LeaseLost, LeaseSettings

from .kubeapi import FAST, PODS, eventually, never, passes
from .kubehttp import LEASES
from .mockapi import NS, create_job, job_status, live, posted_events, requests, running_operator, tiny_job

POD_CREATES = f"post /api/v1/namespaces/{NS}/pods"
STATUS_PATCHES = f"patch /apis/shardwright.io/v1alpha1/namespaces/{NS}/trainingjobs/tiny/status"
LEASE = f"/apis/coordination.k8s.io/v1/namespaces/{NS}/leases/shardwright-operator"


async def test_api_conflicts_and_server_errors_are_retried(kmock_cluster):
    """KMock only: a real server cannot be made to lose a create's response or to answer 409 to a status merge patch."""
    # KMock stores an object even when a reaction answers the request with an error: the
    # first pod create "fails" with 500 after it was stored (a lost response), so the retry
    # meets a 409 for it; the first status write answers 409 (a conflict).
    kmock_cluster[POD_CREATES][:1] << 500
    kmock_cluster[STATUS_PATCHES][:1] << 409
    async with running_operator() as memo:
        await create_job(kmock_cluster, tiny_job())
        await eventually(lambda: job_status(kmock_cluster).get("generation") == 1, what="status written after retries")
        # The status names the generation before its pods are made (intent first).
        await eventually(lambda: sorted(live(kmock_cluster, PODS)) == ["tiny-g1-worker-0", "tiny-g1-worker-1"], what="the pods")
        await eventually(lambda: posted_events(kmock_cluster, "GenerationStarted"), what="event posted")
        await passes(memo, 3)
        assert len(posted_events(kmock_cluster, "GenerationStarted")) == 1  # the retry did not start it twice


async def test_a_leader_whose_lease_requests_fail_stops(kmock_cluster):
    """KMock only: a real server cannot be made to answer 500 to the Lease alone while it serves everything else."""
    leader = LeaderLease(handlers.api_client(), LeaseSettings(namespace=NS, identity="a", duration_s=2, renew_s=0.1))
    serving = asyncio.create_task(handlers.serve(FAST, namespaces=[], metrics_port=None, lease=leader))
    await create_job(kmock_cluster, tiny_job())
    await eventually(lambda: len(live(kmock_cluster, PODS)) == 2, what="the leader starts generation 1")
    assert live(kmock_cluster, LEASES)["shardwright-operator"]["spec"]["holderIdentity"] == "a"
    kmock_cluster[f"get {LEASE}"] << 500
    kmock_cluster[f"patch {LEASE}"] << 500
    with pytest.raises(LeaseLost):
        await asyncio.wait_for(serving, 20)
    # Stopped means stopped: the API calls of a job created now are nobody's.
    creates = requests(kmock_cluster, "POST", "/pods")
    await create_job(kmock_cluster, tiny_job("second"))
    await never(lambda: requests(kmock_cluster, "POST", "/pods") != creates, 1.0, "a pod created after the lease was lost")
