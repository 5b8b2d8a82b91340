"""The operator survives its own restarts without duplicating or losing pods. (Answers of 500
and 409 on cue: test_api_faults.py.)"""

from __future__ import annotations

import asyncio
import dataclasses
import threading

import pytest
import urllib3

from shardwright.operator import handlers

from .kubeapi import (
    FAST, PODS, RecordingClient, Telemetry, create_job, eventually, job_status, kopf_in_loop, live, pod_creates, pods_of, run_all,
    passes, running_operator, sent, set_pod_phase, tiny_job,
)

pytestmark = pytest.mark.cluster


def uids(cluster) -> dict[str, str]:
    return {name: pod["metadata"]["uid"] for name, pod in live(cluster, PODS).items()}


async def test_restarted_operator_adopts_its_pods_without_duplicates(cluster):
    telemetry = Telemetry()
    async with running_operator(cluster, telemetry=telemetry):
        await create_job(cluster, tiny_job())
        await eventually(lambda: job_status(cluster).get("generation") == 1 and len(live(cluster, PODS)) == 2)
    creates, before = pod_creates(cluster), uids(cluster)
    async with running_operator(cluster, telemetry=telemetry):
        await run_all(cluster, 1, step=40, telemetry=telemetry)
        await eventually(lambda: job_status(cluster).get("phase") == "Running", what="Running after restart")
        assert uids(cluster) == before and sorted(before) == ["tiny-g1-worker-0", "tiny-g1-worker-1"]
        assert pod_creates(cluster) == creates and job_status(cluster)["restarts"] == 0


class DyingClient(RecordingClient):
    """The operator's client until ``dead`` is set: then every request fails as if the
    process had died there (nothing it sends arrives)."""

    dead = False

    def call_api(self, method, url, *args, **kwargs):
        if self.dead:
            raise urllib3.exceptions.ProtocolError("the operator is dead")
        response = super().call_api(method, url, *args, **kwargs)
        if method == "POST" and url.endswith("/pods") and len([r for r in self.requests if r.method == "POST" and r.path.endswith("/pods")]) == 2:
            self.dead = True  # killed right after the gang's last pod create, before the pass's status write
        return response


async def test_killed_between_creating_pods_and_writing_status(cluster):
    """Crash-safe intent (issue 16): the status names generation 1 before its first pod is
    created, so an operator killed right after the creates leaves pods that the next one
    adopts: no pod deleted or made again, the gang left running, no restart counted."""
    telemetry = Telemetry()
    dying = DyingClient(cluster.client.configuration)
    async with kopf_in_loop(handlers.make_memo(FAST, api=dying, request_json=telemetry), clusterwide=False, namespaces=[cluster.namespace]):
        await create_job(cluster, tiny_job())
        await eventually(lambda: dying.dead and len(live(cluster, PODS)) == 2, what="the gang created, then the operator dead")
    order = [(r.method, r.path.split("?")[0].rsplit("/", 1)[1]) for r in dying.requests if r.method in ("POST", "PATCH")]
    assert order.index(("PATCH", "status")) < order.index(("POST", "pods")), order
    assert job_status(cluster)["generation"] == 1
    before = uids(cluster)
    async with running_operator(cluster, telemetry=telemetry):
        await run_all(cluster, 1, step=40, telemetry=telemetry)
        status = await eventually(lambda: job_status(cluster).get("phase") == "Running" and job_status(cluster), what="Running")
        assert uids(cluster) == before and status["generation"] == 1 and status["restarts"] == 0
        assert pod_creates(cluster) == 0 and not sent(cluster, "DELETE", lambda p: "/pods/" in p)


async def test_a_pending_generation_whose_pod_vanished_starts_again(cluster):
    """An operator that died mid-start, or a pod deleted before it ran: the generation's
    status says Pending, one pod is missing. Instead of waiting forever, the job starts the
    next generation in full, without spending the restart budget (nothing had run)."""
    async with running_operator(cluster):
        await create_job(cluster, tiny_job(failurePolicy={"maxRestarts": 0, "backoff": {"initialSeconds": 0, "maxSeconds": 0}}))
        await eventually(lambda: len(pods_of(cluster, 1)) == 2 and job_status(cluster).get("generation") == 1, what="generation 1")
    await asyncio.to_thread(cluster.api.request, "DELETE", cluster.path(PODS, "tiny-g1-worker-1"), {"gracePeriodSeconds": 0})
    soon = dataclasses.replace(FAST, kubernetes=dataclasses.replace(FAST.kubernetes, vanished_after_s=1.0))
    async with running_operator(cluster, soon):
        await eventually(lambda: len(pods_of(cluster, 2)) == 2 and not pods_of(cluster, 1), what="generation 2 in full")
        status = job_status(cluster)
        assert status["generation"] == 2 and status["restarts"] == 0 and status["phase"] != "Failed"


async def test_the_operator_carries_on_after_the_api_server_restarts(cluster):
    """Every watch drops when kube-apiserver restarts (an upgrade, a crash): the operator
    watches again and still acts on what changed while it was away."""
    job = tiny_job(failurePolicy={"maxRestarts": 1, "backoff": {"initialSeconds": 0, "maxSeconds": 0}})
    async with running_operator(cluster):
        await create_job(cluster, job)
        await eventually(lambda: len(live(cluster, PODS)) == 2, what="generation 1")
        await run_all(cluster, 1)
        await eventually(lambda: job_status(cluster).get("phase") == "Running", what="Running")
        cluster.cp.restart("kube-apiserver")  # not from a thread: its process would die with the thread (PR_SET_PDEATHSIG)
        await set_pod_phase(cluster, "tiny-g1-worker-1", "Failed", exit_code=1)
        await eventually(lambda: job_status(cluster).get("generation") == 2 and len(pods_of(cluster, 2)) == 2, timeout=60,
                         what="generation 2 after the restart")


async def test_a_condition_another_writer_adds_to_status_is_never_lost(cluster):
    """Optimistic concurrency (issue 16): another controller adds its own condition to the
    job's status while the operator runs it. Every later status write of the operator is
    conditional on the resourceVersion it was computed from (a 409 makes it read again), so
    the condition survives the operator's next writes."""
    telemetry = Telemetry()
    async with running_operator(cluster, telemetry=telemetry) as memo:
        await create_job(cluster, tiny_job())
        await eventually(lambda: len(pods_of(cluster, 1)) == 2, what="generation 1")
        await run_all(cluster, 1, step=40, telemetry=telemetry)
        await eventually(lambda: job_status(cluster).get("step") == 40, what="step 40")
        conditions = job_status(cluster)["conditions"]
        audited = {"type": "Audited", "status": "True", "reason": "PolicyChecked", "message": "by another controller",
                   "lastTransitionTime": "2026-12-06T00:00:00Z"}
        await asyncio.to_thread(cluster.api.merge, cluster.path("shardwright.io/v1alpha1/trainingjobs", "tiny", "status"),
                                {"status": {"conditions": [*conditions, audited]}})
        for step in (41, 42, 43):  # the operator writes the new step each time
            telemetry.answers["10.0.1.0"]["step"] = step
            await eventually(lambda: job_status(cluster).get("step") == step, what=f"step {step} written")
        await passes(memo, 2)
        assert any(c["type"] == "Audited" for c in job_status(cluster)["conditions"]), job_status(cluster)["conditions"]
        assert job_status(cluster)["generation"] == 1


class PartitionedClient(RecordingClient):
    """An operator's client while ``healed`` is clear: its requests wait, as on a network cut
    off from the API server, and go out once it is set again (at most 60 s later)."""

    def __init__(self, configuration) -> None:
        super().__init__(configuration)
        self.healed = threading.Event()
        self.healed.set()

    def call_api(self, method, url, *args, **kwargs):
        self.healed.wait(60)
        return super().call_api(method, url, *args, **kwargs)


async def test_a_stale_leader_never_sets_the_generation_back(cluster):
    """Leader handover (issue 16): operator a runs generation 1 and is cut off from the API
    server; b takes over, sees a rank fail and starts generation 2. a's pass from before the
    takeover (it saw the same failure) goes out late, computed from generation 1's status:
    the server refuses it (409, stale resourceVersion), so status.generation never goes
    back, no pod of b's generation is touched and none is made twice."""
    telemetry = Telemetry()
    stale = PartitionedClient(cluster.client.configuration)
    job = tiny_job(failurePolicy={"maxRestarts": 3, "backoff": {"initialSeconds": 0, "maxSeconds": 0}})
    async with kopf_in_loop(handlers.make_memo(FAST, api=stale, request_json=telemetry), clusterwide=False, namespaces=[cluster.namespace]) as a:
        await create_job(cluster, job)
        await eventually(lambda: len(pods_of(cluster, 1)) == 2, what="generation 1")
        await run_all(cluster, 1, step=40, telemetry=telemetry)
        await eventually(lambda: job_status(cluster).get("phase") == "Running", what="Running")
        await passes(a, 2)
        stale.healed.clear()
        generations: list[int] = []

        async def watch() -> None:
            while True:
                generations.append((await asyncio.to_thread(job_status, cluster)).get("generation", 0))
                await asyncio.sleep(0.05)

        watching = asyncio.create_task(watch())
        try:
            async with running_operator(cluster, telemetry=telemetry):
                await set_pod_phase(cluster, "tiny-g1-worker-1", "Failed", exit_code=1)
                await eventually(lambda: job_status(cluster).get("generation") == 2 and len(pods_of(cluster, 2)) == 2,
                                 what="b starts generation 2")
                await run_all(cluster, 2, step=40, telemetry=telemetry)
                await eventually(lambda: job_status(cluster).get("phase") == "Running", what="generation 2 Running")
                before, sent_before = uids(cluster), len(stale.requests)
                stale.healed.set()  # a's requests from before the takeover go out now
                await eventually(lambda: any(r.status == 409 for r in stale.requests), what="a's stale status write refused")
                await passes(a, 3)
                assert uids(cluster) == before
                late = [(r.method, r.path.split("?")[0], r.status) for r in stale.requests[sent_before:]]
                assert not [r for r in late if r[0] in ("POST", "DELETE") and r[2] < 300], late
        finally:
            watching.cancel()
    since_two = generations[generations.index(2):]
    assert min(since_two) == 2 and job_status(cluster)["generation"] == 2, generations
