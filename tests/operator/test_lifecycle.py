"""A TrainingJob's life on the mock cluster: pods of a generation, failure and restart, the end."""

from __future__ import annotations

from .mockapi import (
    NS, PODS, SERVICES, TJ, Telemetry, create_job, eventually, job_status, live, run_all,
    running_operator, set_pod_phase, tiny_job,
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
