"""A TrainingJob's life on the mock cluster: pods of a generation, failure and restart, the end."""

from __future__ import annotations

import asyncio

from .mockapi import (
    PODS, SERVICES, TJ, Telemetry, api, create_job, eventually, job_status, live, obj_path, patch_job,
    posted_events, run_all, running_operator, set_pod_phase, tiny_job,
)


async def test_create_makes_service_and_generation_one_pods(cluster):
    telemetry = Telemetry()
    async with running_operator(telemetry=telemetry):
        await create_job(cluster, tiny_job())
        pods = await eventually(lambda: len(live(cluster, PODS)) == 2 and live(cluster, PODS), what="2 pods")
        service = live(cluster, SERVICES)["tiny"]
        assert service["spec"]["clusterIP"] == "None"
        pod = pods["tiny-g1-worker-0"]
        labels = pod["metadata"]["labels"]
        assert labels["shardwright.io/job"] == "tiny" and labels["shardwright.io/generation"] == "1"
        assert labels["shardwright.io/group"] == "worker" and labels["shardwright.io/replica"] == "0"
        assert labels["app.kubernetes.io/managed-by"] == "shardwright"
        env = {e["name"]: e["value"] for e in pod["spec"]["containers"][0]["env"]}
        assert env["RANK"] == "0" and env["WORLD_SIZE"] == "2" and env["MASTER_PORT"] == "29500"
        assert env["MASTER_ADDR"] == "tiny-g1-worker-0.tiny.default.svc"
        assert '"generation":1' in env["SHARDWRIGHT_WORKER_CONFIG"]
        other = {e["name"]: e["value"] for e in pods["tiny-g1-worker-1"]["spec"]["containers"][0]["env"]}
        assert other["RANK"] == "1"
        owner = pod["metadata"]["ownerReferences"][0]
        assert owner["kind"] == "TrainingJob" and owner["uid"] == "uid-tiny" and owner["controller"] is True
        await eventually(lambda: job_status(cluster)["generation"] == 1, what="status generation 1")
        await run_all(cluster, 1, step=40, telemetry=telemetry)
        status = await eventually(lambda: job_status(cluster).get("phase") == "Running" and job_status(cluster), what="Running")
        await eventually(lambda: job_status(cluster).get("step") == 40, what="step 40")
        assert status["worldSize"] == 2
        assert any(c["type"] == "Running" and c["status"] == "True" for c in status["conditions"])


def pods_of(kmock, generation: int) -> list[str]:
    return sorted(n for n, p in live(kmock, PODS).items() if p["metadata"]["labels"]["shardwright.io/generation"] == str(generation))


async def test_failure_restarts_from_checkpoint_until_the_budget_is_spent(cluster):
    telemetry = Telemetry()
    job = tiny_job(failurePolicy={"maxRestarts": 1, "backoff": {"initialSeconds": 0, "maxSeconds": 0}})
    async with running_operator(telemetry=telemetry):
        await create_job(cluster, job)
        await eventually(lambda: len(pods_of(cluster, 1)) == 2, what="generation 1")
        await run_all(cluster, 1, step=40, telemetry=telemetry)
        await eventually(lambda: job_status(cluster).get("lastCheckpoint", {}).get("step") == 40, what="checkpoint 40")
        await set_pod_phase(cluster, "tiny-g1-worker-1", "Failed", exit_code=137, reason="OOMKilled")

        await eventually(lambda: len(pods_of(cluster, 2)) == 2 and not pods_of(cluster, 1), what="generation 2 only")
        status = await eventually(lambda: job_status(cluster).get("generation") == 2 and job_status(cluster))
        assert status["restarts"] == 1
        env = {e["name"]: e["value"] for e in live(cluster, PODS)["tiny-g2-worker-0"]["spec"]["containers"][0]["env"]}
        assert "step-00000040" in env["SHARDWRIGHT_WORKER_CONFIG"]  # resumes from the checkpoint
        assert any("exit code 137" in m for m in posted_events(cluster, "OOMKilled"))  # the pod's own reason
        await eventually(lambda: posted_events(cluster, "RestartedFromCheckpoint"), what="RestartedFromCheckpoint event")

        await run_all(cluster, 2)
        await set_pod_phase(cluster, "tiny-g2-worker-0", "Failed", exit_code=1)
        status = await eventually(lambda: job_status(cluster).get("phase") == "Failed" and job_status(cluster), what="Failed")
        failed = next(c for c in status["conditions"] if c["type"] == "Failed")
        assert failed["reason"] == "BackoffLimitExceeded" and failed["status"] == "True"
        await eventually(lambda: not pods_of(cluster, 2), what="generation 2 deleted")
        await asyncio.sleep(1.5)  # three resync periods: a terminal job never gets pods again
        assert not live(cluster, PODS) and job_status(cluster)["restarts"] == 1


async def test_suspend_keeps_the_checkpoint_and_resume_continues_from_it(cluster):
    telemetry = Telemetry()
    async with running_operator(telemetry=telemetry):
        await create_job(cluster, tiny_job())
        await eventually(lambda: len(pods_of(cluster, 1)) == 2, what="generation 1")
        await run_all(cluster, 1, step=40, telemetry=telemetry)
        await eventually(lambda: job_status(cluster).get("step") == 40, what="step 40")

        await patch_job(cluster, "tiny", {"spec": {"suspend": True}})
        await eventually(lambda: job_status(cluster).get("phase") == "Suspended", what="Suspended")
        await eventually(lambda: not live(cluster, PODS), what="pods deleted")
        graceful = [r for r in list(cluster) if r.method == "DELETE" and "/pods/" in str(r.url)]
        assert graceful and all("gracePeriodSeconds=0" not in str(r.url) for r in graceful)
        assert job_status(cluster)["lastCheckpoint"]["step"] == 40

        await patch_job(cluster, "tiny", {"spec": {"suspend": False}})
        await eventually(lambda: len(pods_of(cluster, 2)) == 2, what="generation 2 after resume")
        env = {e["name"]: e["value"] for e in live(cluster, PODS)["tiny-g2-worker-0"]["spec"]["containers"][0]["env"]}
        assert "step-00000040" in env["SHARDWRIGHT_WORKER_CONFIG"]
        assert job_status(cluster)["restarts"] == 0  # a suspend is not a failure


async def test_delete_leaves_children_to_the_garbage_collector(cluster):
    """KMock has no garbage collector: assert what a real API server cascades on (the
    ownerReferences) and that the operator lets the object go and creates nothing more."""
    async with running_operator():
        await create_job(cluster, tiny_job())
        await eventually(lambda: len(pods_of(cluster, 1)) == 2, what="generation 1")
        tj = live(cluster, TJ)["tiny"]
        assert "shardwright.io/operator" in tj["metadata"]["finalizers"]
        await api(cluster, "DELETE", obj_path(TJ, "tiny"))
        await eventually(lambda: "tiny" not in live(cluster, TJ), what="TrainingJob gone (finalizer released)")
        children = list(live(cluster, PODS).values()) + list(live(cluster, SERVICES).values())
        assert children and all(c["metadata"]["ownerReferences"][0]["uid"] == "uid-tiny" for c in children)
        created = len([r for r in list(cluster) if r.method == "POST" and r.url.path.endswith("/pods")])
        await asyncio.sleep(1.0)
        assert len([r for r in list(cluster) if r.method == "POST" and r.url.path.endswith("/pods")]) == created


async def test_status_is_written_once_for_a_starting_generation(cluster):
    """The pass that starts generation 1 writes the status with every rank Pending; the
    passes that see the pods appear one at a time compute the same status and write nothing."""
    async with running_operator():
        await create_job(cluster, tiny_job())
        await eventually(lambda: len(pods_of(cluster, 1)) == 2 and job_status(cluster).get("generation") == 1, what="generation 1")
        await asyncio.sleep(1.5)  # three resync periods: every pod event has been seen
        writes = [r.data["status"] for r in list(cluster) if r.method == "PATCH" and r.url.path.endswith("/trainingjobs/tiny/status")]
        assert len(writes) == 1, writes
        assert [(r["rank"], r["state"]) for r in writes[0]["ranks"]] == [(0, "Pending"), (1, "Pending")]
        await run_all(cluster, 1)
        await eventually(lambda: job_status(cluster).get("phase") == "Running", what="Running")
