"""A TrainingJob's life on the local control plane: pods of a generation, failure and
restart, suspend and resume, deletion with the garbage collector, the status writes."""

from __future__ import annotations

import asyncio

import pytest

from .kubeapi import (
    PODS, TJ, Telemetry, create_job, delete, eventually, get, job_status, live, never, passes, patch_job, pod_creates, pods_of, posted_events, run_all, running_operator, sent, set_pod_phase, tiny_job,
)
from .kubehttp import SERVICES

pytestmark = pytest.mark.cluster
PDBS = "policy/v1/poddisruptionbudgets"


def env(pod: dict) -> dict[str, str]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in pod["spec"]["containers"][0]["env"]}


async def test_create_makes_service_and_generation_one_pods(cluster):
    telemetry = Telemetry()
    async with running_operator(cluster, telemetry=telemetry):
        job = await create_job(cluster, tiny_job())
        pods = await eventually(lambda: len(live(cluster, PODS)) == 2 and live(cluster, PODS), what="2 pods")
        service = await eventually(lambda: live(cluster, SERVICES).get("tiny"), what="the Service")
        assert service["spec"]["clusterIP"] == "None"
        pod = pods["tiny-g1-worker-0"]
        labels = pod["metadata"]["labels"]
        assert labels["shardwright.io/job"] == "tiny" and labels["shardwright.io/generation"] == "1"
        assert labels["shardwright.io/group"] == "worker" and labels["shardwright.io/replica"] == "0"
        assert labels["app.kubernetes.io/managed-by"] == "shardwright"
        first = env(pod)
        assert first["RANK"] == "0" and first["WORLD_SIZE"] == "2" and first["MASTER_PORT"] == "29500"
        assert first["MASTER_ADDR"] == f"tiny-g1-worker-0.tiny.{cluster.namespace}.svc"
        assert '"generation":1' in first["SHARDWRIGHT_WORKER_CONFIG"]
        assert env(pods["tiny-g1-worker-1"])["RANK"] == "1"
        for child in [*pods.values(), service]:
            (owner,) = child["metadata"]["ownerReferences"]
            assert owner["kind"] == "TrainingJob" and owner["uid"] == job["metadata"]["uid"] and owner["controller"] is True
        await eventually(lambda: job_status(cluster)["generation"] == 1, what="status generation 1")
        await run_all(cluster, 1, step=40, telemetry=telemetry)
        status = await eventually(lambda: job_status(cluster).get("phase") == "Running" and job_status(cluster), what="Running")
        await eventually(lambda: job_status(cluster).get("step") == 40, what="step 40")
        assert status["worldSize"] == 2
        assert any(c["type"] == "Running" and c["status"] == "True" for c in status["conditions"])


async def test_failure_restarts_from_checkpoint_until_the_budget_is_spent(cluster):
    telemetry = Telemetry()
    job = tiny_job(failurePolicy={"maxRestarts": 1, "backoff": {"initialSeconds": 0, "maxSeconds": 0}})
    async with running_operator(cluster, telemetry=telemetry) as memo:
        await create_job(cluster, job)
        await eventually(lambda: len(pods_of(cluster, 1)) == 2, what="generation 1")
        await run_all(cluster, 1, step=40, telemetry=telemetry)
        await eventually(lambda: job_status(cluster).get("lastCheckpoint", {}).get("step") == 40, what="checkpoint 40")
        await set_pod_phase(cluster, "tiny-g1-worker-1", "Failed", exit_code=137, reason="OOMKilled")

        await eventually(lambda: len(pods_of(cluster, 2)) == 2 and not pods_of(cluster, 1), what="generation 2 only")
        status = await eventually(lambda: job_status(cluster).get("generation") == 2 and job_status(cluster))
        assert status["restarts"] == 1
        assert "step-00000040" in env(get(cluster, PODS, "tiny-g2-worker-0"))["SHARDWRIGHT_WORKER_CONFIG"]  # resumes there
        assert any("exit code 137" in m for m in posted_events(cluster, "OOMKilled"))  # the pod's own reason
        await eventually(lambda: posted_events(cluster, "RestartedFromCheckpoint"), what="RestartedFromCheckpoint event")

        await run_all(cluster, 2)
        await set_pod_phase(cluster, "tiny-g2-worker-0", "Failed", exit_code=1)
        status = await eventually(lambda: job_status(cluster).get("phase") == "Failed" and job_status(cluster), what="Failed")
        failed = next(c for c in status["conditions"] if c["type"] == "Failed")
        assert failed["reason"] == "BackoffLimitExceeded" and failed["status"] == "True"
        await eventually(lambda: not pods_of(cluster, 2), what="generation 2 deleted")
        await passes(memo, 3)  # a terminal job never gets pods again
        assert not live(cluster, PODS) and job_status(cluster)["restarts"] == 1


async def test_suspend_keeps_the_checkpoint_and_resume_continues_from_it(cluster):
    telemetry = Telemetry()
    async with running_operator(cluster, telemetry=telemetry):
        await create_job(cluster, tiny_job())
        await eventually(lambda: len(pods_of(cluster, 1)) == 2, what="generation 1")
        await run_all(cluster, 1, step=40, telemetry=telemetry)
        await eventually(lambda: job_status(cluster).get("step") == 40, what="step 40")

        await patch_job(cluster, "tiny", {"spec": {"suspend": True}})
        await eventually(lambda: job_status(cluster).get("phase") == "Suspended", what="Suspended")
        await eventually(lambda: not live(cluster, PODS), what="pods deleted")
        # Graceful: the kubelet got each pod with its grace period to checkpoint in.
        assert sorted(cluster.kubelet.stopped) == [("tiny-g1-worker-0", 120), ("tiny-g1-worker-1", 120)]
        assert job_status(cluster)["lastCheckpoint"]["step"] == 40

        await patch_job(cluster, "tiny", {"spec": {"suspend": False}})
        await eventually(lambda: len(pods_of(cluster, 2)) == 2, what="generation 2 after resume")
        assert "step-00000040" in env(get(cluster, PODS, "tiny-g2-worker-0"))["SHARDWRIGHT_WORKER_CONFIG"]
        assert job_status(cluster)["restarts"] == 0  # a suspend is not a failure


async def test_deleted_job_lets_the_garbage_collector_take_its_children(cluster):
    async with running_operator(cluster):
        job = await create_job(cluster, tiny_job())
        await eventually(lambda: len(pods_of(cluster, 1)) == 2 and live(cluster, SERVICES), what="generation 1 and the Service")
        assert not get(cluster, TJ, "tiny")["metadata"].get("finalizers")  # nothing holds the deletion back
        children = [*live(cluster, PODS).values(), *live(cluster, SERVICES).values()]
        assert all(c["metadata"]["ownerReferences"][0]["uid"] == job["metadata"]["uid"] for c in children)
        await delete(cluster, TJ, "tiny")
        await eventually(lambda: get(cluster, TJ, "tiny") is None, what="TrainingJob gone")
        # The garbage collector follows the ownerReferences to the job's uid.
        await eventually(lambda: not live(cluster, PODS) and not live(cluster, SERVICES), what="pods and Service collected")
        created = pod_creates(cluster)
        await never(lambda: pod_creates(cluster) > created or live(cluster, PODS), 1.0, "a pod created for a deleted job")


async def test_status_is_written_only_when_it_changes(cluster):
    """The pass that starts generation 1 writes the status with every rank Pending; later
    passes write only what is new (the scheduler's verdict on the pods), never the same
    status twice, and nothing once the pods stop changing."""
    async with running_operator(cluster) as memo:
        await create_job(cluster, tiny_job())
        await eventually(lambda: len(pods_of(cluster, 1)) == 2 and job_status(cluster).get("generation") == 1, what="generation 1")
        await eventually(lambda: all(unschedulable(p) for p in pods_of(cluster, 1).values()), what="the scheduler's verdict")
        await passes(memo, 3)
        writes = status_writes(cluster)
        assert [(r["rank"], r["state"]) for r in writes[0]["ranks"]] == [(0, "Pending"), (1, "Pending")]
        assert all(a != b for a, b in zip(writes, writes[1:])), writes
        assert all("Unschedulable" in r.get("message", "") for r in writes[-1]["ranks"]), writes[-1]
        await passes(memo, 3)
        assert status_writes(cluster) == writes
        await run_all(cluster, 1)
        await eventually(lambda: job_status(cluster).get("phase") == "Running", what="Running")


def unschedulable(pod: dict) -> bool:
    return any(c["type"] == "PodScheduled" and c.get("reason") == "Unschedulable" for c in pod["status"].get("conditions", []))


def status_writes(cluster) -> list[dict]:
    return [r.body["status"] for r in sent(cluster, "PATCH", lambda p: p.endswith("/trainingjobs/tiny/status"))]


# ----------------------------------------------------------------------------- REVIEW-operator findings


async def running_generation_one(cluster, job: dict) -> None:
    await create_job(cluster, job)
    await eventually(lambda: len(pods_of(cluster, 1)) == 2, what="generation 1")
    await run_all(cluster, 1)
    await eventually(lambda: job_status(cluster).get("phase") == "Running", what="Running")


async def test_a_failed_generations_other_pods_stop_gracefully_before_the_next_starts(cluster):
    """REVIEW-operator finding 3 (fenced generations): the survivors of a failed generation
    get their grace period, and generation 2 starts only once they have stopped, so two
    generations never hold the same GPUs or write the same checkpoint."""
    job = tiny_job(failurePolicy={"maxRestarts": 1, "backoff": {"initialSeconds": 0, "maxSeconds": 0}})
    async with running_operator(cluster) as memo:
        await running_generation_one(cluster, job)
        cluster.kubelet.hold()  # rank 0's processes take their time to checkpoint and stop
        await set_pod_phase(cluster, "tiny-g1-worker-1", "Failed", exit_code=1)
        await eventually(lambda: job_status(cluster).get("restarts") == 1, what="the restart decided")
        await passes(memo, 3)
        survivor = get(cluster, PODS, "tiny-g1-worker-0")
        assert survivor and survivor["metadata"].get("deletionGracePeriodSeconds") == 120, survivor and survivor["metadata"]
        assert not pods_of(cluster, 2)  # not while rank 0 may still run
        await cluster.kubelet.release()
        await eventually(lambda: len(pods_of(cluster, 2)) == 2, what="generation 2 once generation 1 is gone")


async def test_observed_generation_advances_when_the_edited_spec_runs(cluster):
    """observedGeneration means "this spec is what runs": a policy edit runs at once; new
    replicas run only once the resized generation starts, and until then generation 1's
    spec stays observed."""
    async with running_operator(cluster) as memo:
        await running_generation_one(cluster, tiny_job())
        assert job_status(cluster)["observedGeneration"] == 1
        await patch_job(cluster, "tiny", {"spec": {"failurePolicy": {"maxRestarts": 5}}})
        await eventually(lambda: job_status(cluster).get("observedGeneration") == 2, what="the policy edit observed")
        cluster.kubelet.hold()  # generation 1's ranks take their time to checkpoint and stop
        workers = [{**tiny_job()["spec"]["workers"][0], "replicas": 3}]
        await patch_job(cluster, "tiny", {"spec": {"workers": workers}})
        restarting = await eventually(lambda: (s := job_status(cluster)).get("phase") == "Restarting" and s, what="the resize")
        await passes(memo, 3)
        assert restarting["observedGeneration"] == job_status(cluster)["observedGeneration"] == 2
        await cluster.kubelet.release()
        await eventually(lambda: len(pods_of(cluster, 2)) == 3, what="generation 2 at 3 ranks")
        status = await eventually(lambda: (s := job_status(cluster)).get("generation") == 2 and s, what="status generation 2")
        assert status["observedGeneration"] == 3 and status["worldSize"] == 3


async def test_a_job_deleted_while_no_operator_runs_goes_with_its_children(cluster):
    """REVIEW-operator finding 8: no finalizer, so deleting a job (or its namespace) never
    waits for an operator; the garbage collector takes the pods by their ownerReferences."""
    async with running_operator(cluster) as memo:
        await create_job(cluster, tiny_job())
        await eventually(lambda: len(pods_of(cluster, 1)) == 2, what="generation 1")
        await passes(memo, 3)  # long enough for a finalizer to be added, were one added
        assert not get(cluster, TJ, "tiny")["metadata"].get("finalizers")
    await delete(cluster, TJ, "tiny")
    await eventually(lambda: get(cluster, TJ, "tiny") is None and not live(cluster, PODS), timeout=10, what="the job and its pods gone")


async def test_an_evicted_pod_restarts_the_job_without_spending_the_budget(cluster):
    """REVIEW-operator finding 10: a pod evicted through the Eviction API carries the
    DisruptionTarget condition; the job restarts with ``maxRestarts: 0`` unspent."""
    job = tiny_job(failurePolicy={"maxRestarts": 0, "backoff": {"initialSeconds": 0, "maxSeconds": 0}})
    async with running_operator(cluster):
        await running_generation_one(cluster, job)
        cluster.kubelet.hold()
        eviction = {"apiVersion": "policy/v1", "kind": "Eviction", "metadata": {"name": "tiny-g1-worker-1"}}
        await asyncio.to_thread(cluster.api.request, "POST", cluster.path(PODS, "tiny-g1-worker-1", "eviction"), eviction)
        # As the kubelet does: SIGTERM, the container ends, the pod's terminal phase, then the deletion.
        await eventually(lambda: cluster.kubelet.stopped == [("tiny-g1-worker-1", 120)], what="the eviction's graceful stop")
        assert any(c["type"] == "DisruptionTarget" for c in get(cluster, PODS, "tiny-g1-worker-1")["status"]["conditions"])
        await set_pod_phase(cluster, "tiny-g1-worker-1", "Failed", exit_code=143)
        await cluster.kubelet.release()
        outcome = await eventually(lambda: pods_of(cluster, 2) or job_status(cluster).get("phase") == "Failed", what="a restart or the end")
        assert outcome is not True, job_status(cluster)["conditions"]
        assert job_status(cluster)["restarts"] == 0
        # One PodDisruptionBudget per generation: a drain may take one pod of it, no more.
        budget = await eventually(lambda: get(cluster, PDBS, "tiny-g2"), what="generation 2's PodDisruptionBudget")
        assert budget["spec"]["minAvailable"] == 1 and budget["spec"]["selector"]["matchLabels"]["shardwright.io/generation"] == "2"
        assert get(cluster, PDBS, "tiny-g1") is None
        # Each start removes the budget of the generation before it; the first has none to remove.
        assert [r.path.rsplit("/", 1)[1] for r in sent(cluster, "DELETE", lambda p: "/poddisruptionbudgets/" in p)] == ["tiny-g1"]


async def test_a_pod_force_deleted_under_a_running_generation_restarts_the_job(cluster):
    """``kubectl delete pod --force``, or the pod garbage collector after its node was
    deleted: the pod is gone without a terminal phase, and its ranks with it (a defect not
    in REVIEW-operator.md: the job stayed Running while one of two pods was gone)."""
    job = tiny_job(failurePolicy={"maxRestarts": 1, "backoff": {"initialSeconds": 0, "maxSeconds": 0}})
    async with running_operator(cluster) as memo:
        await running_generation_one(cluster, job)
        await asyncio.to_thread(cluster.api.request, "DELETE", cluster.path(PODS, "tiny-g1-worker-1"), {"gracePeriodSeconds": 0})
        await passes(memo, 4)  # the first to see the pod gone ends the generation, the next starts one
        assert job_status(cluster)["generation"] == 2, job_status(cluster)["ranks"]


async def test_a_job_created_again_under_its_name_never_adopts_the_old_jobs_pods(cluster):
    """Issue 16, ownership by uid: the old job's pods, still Terminating while the garbage
    collector takes them, carry the same name and labels as the new job's would. The new
    job adopts none of them, waits with a condition saying why, then starts at generation 1."""
    async with running_operator(cluster) as memo:
        await running_generation_one(cluster, tiny_job())
        old = {name: pod["metadata"]["uid"] for name, pod in pods_of(cluster, 1).items()}
        cluster.kubelet.hold()  # the old pods' containers take their time to stop
        await delete(cluster, TJ, "tiny")
        await eventually(lambda: get(cluster, TJ, "tiny") is None, what="the old job gone")
        await eventually(lambda: all(p["metadata"].get("deletionTimestamp") for p in pods_of(cluster, 1).values()),
                         what="the garbage collector deleting the old pods")
        job = await create_job(cluster, tiny_job())
        waiting = await eventually(lambda: next((c for c in job_status(cluster).get("conditions", [])
                                                 if c["reason"] == "PreviousJobTerminating"), None), what="the wait explained")
        assert "tiny-g1-worker-0" in waiting["message"] and waiting["status"] == "False"
        await passes(memo, 3)
        assert {name: pod["metadata"]["uid"] for name, pod in pods_of(cluster, 1).items()} == old  # nothing adopted or replaced
        assert job_status(cluster).get("generation", 0) == 0 and job_status(cluster).get("restarts", 0) == 0
        await cluster.kubelet.release()
        pods = await eventually(lambda: len(fresh := pods_of(cluster, 1)) == 2 and not set(old.values()) & {p["metadata"]["uid"] for p in fresh.values()}
                                and fresh, what="the new job's generation 1")
        assert {p["metadata"]["ownerReferences"][0]["uid"] for p in pods.values()} == {job["metadata"]["uid"]}
        await run_all(cluster, 1)
        status = await eventually(lambda: job_status(cluster).get("phase") == "Running" and job_status(cluster), what="Running")
        assert status["generation"] == 1 and status["restarts"] == 0
