"""``runtime: ray`` on the local control plane: per generation a Ray head pod, whose driver
runs the ranks, and one Ray worker pod per replica; the head decides the generation's
outcome, a worker pod's own failure names its ranks, and either restarts the job as a new
generation from the last checkpoint. (How the head's and workers' pods are read: test_pods.py.)"""

from __future__ import annotations

import json

import pytest

from .kubeapi import (
    PODS, Telemetry, create_job, eventually, get, job_status, live, pods_of, posted_events, running_operator, set_pod_phase, tiny_job,
)
from .kubehttp import SERVICES

pytestmark = pytest.mark.cluster

HEAD, WORKERS = "tiny-g1-head", ["tiny-g1-worker-0", "tiny-g1-worker-1"]
RESTART_NOW = {"maxRestarts": 2, "backoff": {"initialSeconds": 0, "maxSeconds": 0}}


def env(pod: dict) -> dict[str, str]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in pod["spec"]["containers"][0]["env"]}


async def start_running(cluster, telemetry: Telemetry, step: int = 40) -> None:
    """Generation 1's head and workers run; rank 0 (on worker 0) reports ``step`` and a checkpoint there."""
    await eventually(lambda: sorted(pods_of(cluster, 1)) == sorted([HEAD, *WORKERS]), what="generation 1")
    for i, name in enumerate([HEAD, *WORKERS]):
        await set_pod_phase(cluster, name, "Running", ip=f"10.0.1.{i}")
    telemetry.answers["10.0.1.1"] = {
        "generation": 1, "step": step, "loss": 1.5, "tokensPerSecond": 1000.0,
        "lastCheckpoint": {"step": step, "path": f"/checkpoints/{cluster.namespace}/tiny/step-{step:08d}", "worldSize": 2, "layout": "dp=2,sp=1"},
    }
    await eventually(lambda: job_status(cluster).get("phase") == "Running" and job_status(cluster).get("step") == step, what="Running")


async def test_a_ray_job_gets_a_head_and_a_worker_pod_per_replica(cluster):
    async with running_operator(cluster):
        job = await create_job(cluster, tiny_job(runtime="ray"))
        pods = await eventually(lambda: len(live(cluster, PODS)) == 3 and live(cluster, PODS), what="3 pods")
        assert sorted(pods) == sorted([HEAD, *WORKERS])
        service = await eventually(lambda: live(cluster, SERVICES).get("tiny"), what="the Service")
        assert service["spec"]["selector"] == {"shardwright.io/job": "tiny"}  # the head's DNS name too

        head = pods[HEAD]
        labels = head["metadata"]["labels"]
        assert labels["shardwright.io/role"] == "ray-head" and labels["shardwright.io/generation"] == "1"
        assert labels["shardwright.io/job"] == "tiny" and labels["app.kubernetes.io/managed-by"] == "shardwright"
        assert head["spec"]["containers"][0]["command"] == ["python", "-m", "shardwright.operator.cli", "ray-head"]
        assert head["spec"]["hostname"] == HEAD and head["spec"]["subdomain"] == "tiny"
        head_env = env(head)
        assert head_env["WORLD_SIZE"] == "2" and head_env["MASTER_PORT"] == "29500"
        assert '"generation":1' in head_env["SHARDWRIGHT_WORKER_CONFIG"]
        members = json.loads(head_env["SHARDWRIGHT_RAY_PODS"])
        assert members == [
            {"name": WORKERS[0], "firstRank": 0, "ranks": 1, "telemetryPort": 9400},
            {"name": WORKERS[1], "firstRank": 1, "ranks": 1, "telemetryPort": 9400},
        ]

        for replica, name in enumerate(WORKERS):
            worker = pods[name]
            labels = worker["metadata"]["labels"]
            assert labels["shardwright.io/role"] == "ray-worker" and labels["shardwright.io/replica"] == str(replica)
            assert labels["shardwright.io/rank"] == str(replica) and labels["shardwright.io/group"] == "worker"
            assert worker["spec"]["containers"][0]["command"] == [
                "python", "-m", "shardwright.workers.raynode", f"tiny-g1-head.tiny.{cluster.namespace}.svc:6379",
                f'--resources={{"{name}": 1}}',
            ]
            assert env(worker) == {"RANK": str(replica), "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "1",
                                   "SHARDWRIGHT_TELEMETRY_TOKEN": {"secretKeyRef": {"name": f"tiny-telemetry-{job['metadata']['uid']}", "key": "token"}}}
            resources = worker["spec"]["containers"][0]["resources"]
            # The group's, and its rank's GPU (a gpu group: nvidia.com/gpu = ranksPerReplica).
            assert resources["requests"] == {"cpu": "1", "memory": "2Gi", "nvidia.com/gpu": "1"}
            assert resources["limits"]["nvidia.com/gpu"] == "1"
        for pod in pods.values():
            (owner,) = pod["metadata"]["ownerReferences"]
            assert owner["kind"] == "TrainingJob" and owner["uid"] == job["metadata"]["uid"] and owner["controller"] is True
        status = await eventually(lambda: job_status(cluster).get("generation") == 1 and job_status(cluster), what="status")
        assert status["worldSize"] == 2 and [r["state"] for r in status["ranks"]] == ["Pending", "Pending"]


async def test_a_failed_worker_pod_restarts_the_job_from_the_checkpoint(cluster):
    telemetry = Telemetry()
    async with running_operator(cluster, telemetry=telemetry):
        await create_job(cluster, tiny_job(runtime="ray", failurePolicy=RESTART_NOW))
        await start_running(cluster, telemetry)
        await set_pod_phase(cluster, WORKERS[1], "Failed", exit_code=137, reason="OOMKilled")

        await eventually(lambda: len(pods_of(cluster, 2)) == 3 and not pods_of(cluster, 1), what="generation 2 only")
        status = await eventually(lambda: job_status(cluster).get("generation") == 2 and job_status(cluster))
        assert status["restarts"] == 1
        assert "step-00000040" in env(get(cluster, PODS, "tiny-g2-head"))["SHARDWRIGHT_WORKER_CONFIG"]
        assert any("Rank 1 failed (exit code 137): OOMKilled" in m for m in posted_events(cluster, "OOMKilled"))


async def test_a_failed_head_restarts_the_job_and_a_finished_one_completes_it(cluster):
    telemetry = Telemetry()
    async with running_operator(cluster, telemetry=telemetry):
        await create_job(cluster, tiny_job(runtime="ray", failurePolicy=RESTART_NOW))
        await start_running(cluster, telemetry)
        await set_pod_phase(cluster, HEAD, "Failed", exit_code=1)  # the driver saw a rank fail

        await eventually(lambda: len(pods_of(cluster, 2)) == 3 and not pods_of(cluster, 1), what="generation 2 only")
        await eventually(lambda: job_status(cluster).get("restarts") == 1, what="restart 1 in the status")
        assert any("Rank 0 failed (exit code 1)" in m for m in posted_events(cluster, "Error"))  # the head's exit

        await set_pod_phase(cluster, "tiny-g2-head", "Succeeded", exit_code=0)
        status = await eventually(lambda: job_status(cluster).get("phase") == "Complete" and job_status(cluster), what="Complete")
        assert status["restarts"] == 1 and status["generation"] == 2
