"""The operator survives its own restarts without duplicating or losing pods. (Answers of 500
and 409 on cue: test_api_faults.py.)"""

from __future__ import annotations


import pytest

from .kubeapi import (
    PODS, TJ, Telemetry, create_job, eventually, job_status, live, pod_creates, pods_of, run_all, running_operator, sent,
    set_pod_phase, tiny_job,
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


async def test_stopped_between_creating_pods_and_writing_status(cluster):
    """The operator stops after creating the pods but before its status write landed (the
    test erases the written status while no operator runs). The next operator sees pods of a
    generation its status does not know: it stops them and starts that generation again
    under the same names, so there are never two live copies of a pod."""
    async with running_operator(cluster):
        await create_job(cluster, tiny_job())
        await eventually(lambda: len(live(cluster, PODS)) == 2 and job_status(cluster).get("generation") == 1)
    cluster.api.merge(cluster.path(TJ, "tiny", "status"), {"status": None})
    assert job_status(cluster) == {}
    before = uids(cluster)
    async with running_operator(cluster):
        await eventually(lambda: job_status(cluster).get("generation") == 1 and len(live(cluster, PODS)) == 2, what="generation 1")
        await eventually(lambda: not set(uids(cluster).values()) & set(before.values()), what="the pods made again")
    assert sorted(live(cluster, PODS)) == ["tiny-g1-worker-0", "tiny-g1-worker-1"]
    creates = [r.body["metadata"]["name"] for r in sent(cluster, "POST", lambda p: p.endswith("/pods"))]
    deletes = [r.path.split("?")[0].rsplit("/", 1)[1] for r in sent(cluster, "DELETE", lambda p: "/pods/" in p)]
    # Every create after the first pair followed the delete of the same name.
    assert len(creates) - len(deletes) == 2 and sorted(creates[2:]) == sorted(deletes)


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
