"""The operator survives its own restarts and a flaky API server, and rejects bad objects."""

from __future__ import annotations

import asyncio
import dataclasses

import aiohttp

from shardwright.operator.backends.ports import free_port

from .mockapi import (
    FAST, NS, PODS, TJ, Telemetry, create_job, eventually, job_status, live, posted_events, run_all,
    running_operator, tiny_job,
)

POD_CREATES = "post /api/v1/namespaces/default/pods"
STATUS_PATCHES = "patch /apis/shardwright.io/v1alpha1/namespaces/default/trainingjobs/tiny/status"


def pod_creates(kmock) -> int:
    return len([r for r in list(kmock) if r.method == "POST" and r.url.path.endswith("/pods")])


async def test_restarted_operator_adopts_its_pods_without_duplicates(cluster):
    telemetry = Telemetry()
    async with running_operator(telemetry=telemetry):
        await create_job(cluster, tiny_job())
        await eventually(lambda: job_status(cluster).get("generation") == 1 and len(live(cluster, PODS)) == 2)
    creates = pod_creates(cluster)
    async with running_operator(telemetry=telemetry):
        await run_all(cluster, 1, step=40, telemetry=telemetry)
        await eventually(lambda: job_status(cluster).get("phase") == "Running", what="Running after restart")
        assert sorted(live(cluster, PODS)) == ["tiny-g1-worker-0", "tiny-g1-worker-1"]
        assert pod_creates(cluster) == creates and job_status(cluster)["restarts"] == 0


async def test_stopped_between_creating_pods_and_writing_status(cluster):
    """The operator stops after creating the pods but before its status write landed (the
    test erases the written status while no operator runs). The next operator sees pods of a
    generation its status does not know: it stops them and starts that generation again
    under the same names, so there are never two live copies of a pod."""
    async with running_operator():
        await create_job(cluster, tiny_job())
        await eventually(lambda: len(live(cluster, PODS)) == 2 and job_status(cluster).get("generation") == 1)
    raw = dict(cluster.objects[TJ, NS, "tiny"].raw)
    raw.pop("status")
    cluster.objects[TJ, NS, "tiny"] = raw
    async with running_operator():
        await eventually(lambda: job_status(cluster).get("generation") == 1 and len(live(cluster, PODS)) == 2, what="generation 1")
    assert sorted(live(cluster, PODS)) == ["tiny-g1-worker-0", "tiny-g1-worker-1"]
    creates = [r.data["metadata"]["name"] for r in list(cluster) if r.method == "POST" and r.url.path.endswith("/pods")]
    deletes = [r.url.path.rsplit("/", 1)[1] for r in list(cluster) if r.method == "DELETE" and "/pods/" in r.url.path]
    # Every create after the first pair followed the delete of the same name.
    assert len(creates) - len(deletes) == 2


async def test_api_conflicts_and_server_errors_are_retried(cluster):
    # KMock stores an object even when a reaction answers the request with an error: the
    # first pod create "fails" with 500 after it was stored (a lost response), so the retry
    # meets a 409 for it; the first status write answers 409 (a conflict).
    cluster[POD_CREATES][:1] << 500
    cluster[STATUS_PATCHES][:1] << 409
    async with running_operator():
        await create_job(cluster, tiny_job())
        await eventually(lambda: job_status(cluster).get("generation") == 1, what="status written after retries")
        assert sorted(live(cluster, PODS)) == ["tiny-g1-worker-0", "tiny-g1-worker-1"]
        await eventually(lambda: posted_events(cluster, "GenerationStarted"), what="event posted")
        await asyncio.sleep(0.5)
        assert len(posted_events(cluster, "GenerationStarted")) == 1  # the retry did not start it twice


async def test_webhook_rejects_a_bad_object_naming_the_field(cluster):
    port = free_port()
    async with running_operator(dataclasses.replace(FAST, webhook_port=port)):
        bad = tiny_job()
        bad["spec"]["model"]["heads"] = 5  # does not divide dim 64
        review = {
            "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
            "request": {
                "uid": "review-1", "operation": "CREATE", "object": bad, "oldObject": None,
                "kind": {"group": "shardwright.io", "version": "v1alpha1", "kind": "TrainingJob"},
                "resource": {"group": "shardwright.io", "version": "v1alpha1", "resource": "trainingjobs"},
                "userInfo": {"username": "test"}, "namespace": "default", "name": "tiny", "dryRun": False,
            },
        }
        url = f"http://127.0.0.1:{port}/admit"  # Kopf serves each webhook at its handler id
        async with aiohttp.ClientSession() as session:
            answer = await eventually_answer(session, url, review)
            assert answer["allowed"] is False
            assert "spec.model.heads" in answer["status"]["message"] and answer["status"]["code"] == 422
            review["request"]["object"] = tiny_job()
            async with session.post(url, json=review) as response:
                assert (await response.json())["response"]["allowed"] is True



async def eventually_answer(session, url: str, review: dict) -> dict:
    """The webhook server starts listening shortly after the operator is ready."""
    for _ in range(100):
        try:
            async with session.post(url, json=review) as response:
                return (await response.json())["response"]
        except aiohttp.ClientConnectorError:
            await asyncio.sleep(0.05)
    raise AssertionError(f"no webhook server at {url}")
