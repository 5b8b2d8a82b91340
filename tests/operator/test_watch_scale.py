"""What the operator costs the API server, on the local control plane: its pod watch selects
server-side and resumes from its resourceVersion after each timeout, a finished job gets no
periodic passes, and per-step figures reach the metrics at once but the status only every
``progress_status_seconds``."""

from __future__ import annotations

import asyncio
import dataclasses
import urllib.parse

import pytest

from e2e.cluster import audit
from shardwright.operator import handlers
from shardwright.operator.operatorconfig import WatchSettings
from tests.support import audited

from .kubeapi import (
    FAST, Telemetry, create_job, eventually, job_status, kopf_in_loop, passes_done, patch_job, pods_of,
    run_all, running_operator, sent, set_pod_phase, tiny_job,
)

pytestmark = pytest.mark.cluster


def _query(uri: str) -> dict[str, str]:
    return dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(uri).query))


async def test_pods_are_selected_by_the_api_server_and_watches_resume(cluster, tmp_path, monkeypatch):
    """The audit log of the operator's own identity: every pod list and watch carries the
    operator's label selector, every watch a timeout and bookmarks, and after a timeout the
    watch resumes from a resourceVersion instead of listing again."""
    kubeconfig = tmp_path / "operator.kubeconfig"
    user = await asyncio.to_thread(audited.service_account, cluster.cp, cluster.namespace, "operator", kubeconfig)
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
    cfg = dataclasses.replace(FAST, watch=WatchSettings(server_timeout_s=2, client_timeout_s=10))
    since = audit.size(cluster.cp.audit_log)
    try:
        memo = handlers.make_memo(cfg, api=handlers.api_client(), request_json=Telemetry())
        async with kopf_in_loop(memo, clusterwide=False, namespaces=[cluster.namespace]):
            await create_job(cluster, tiny_job())
            await eventually(lambda: len(pods_of(cluster, 1)) == 2, what="generation 1")
            await asyncio.sleep(5)  # two watch timeouts at least
    finally:
        await asyncio.to_thread(audited.remove, cluster.cp, cluster.namespace, "operator")
    made = audited.requests(cluster.cp.audit_log, user, since=since)
    pods = [r for r in made if r.resource == "pods" and r.verb in ("list", "watch")]
    assert pods, f"no pod list or watch of {user} in the audit log: {made}"
    for r in pods:
        assert _query(r.uri).get("labelSelector") == handlers.POD_SELECTOR, r.uri
    assert handlers.POD_SELECTOR == "app.kubernetes.io/managed-by=shardwright,shardwright.io/job"
    for resource in ("pods", "nodes", "trainingjobs"):
        watches = [_query(r.uri) for r in made if r.resource == resource and r.verb == "watch"]
        lists = [r for r in made if r.resource == resource and r.verb == "list"]
        assert len(watches) >= 2 and len(lists) == 1, (resource, watches, lists)  # resumed, never listed again
        assert all(w.get("timeoutSeconds") == "2" and w.get("allowWatchBookmarks") == "true" for w in watches), watches
        assert all(w.get("resourceVersion") for w in watches), watches


async def test_a_finished_job_gets_no_periodic_passes(cluster):
    telemetry = Telemetry()
    async with running_operator(cluster, telemetry=telemetry) as memo:
        await create_job(cluster, tiny_job())
        await eventually(lambda: len(pods_of(cluster, 1)) == 2, what="generation 1")
        for name in await run_all(cluster, 1, step=120, telemetry=telemetry):
            await set_pod_phase(cluster, name, "Succeeded", exit_code=0)
        await eventually(lambda: job_status(cluster).get("phase") == "Complete", what="Complete")
        await asyncio.sleep(2)  # the events of the last writes and pod deletions settle
        before = passes_done(memo)
        await asyncio.sleep(3)  # six resyncs (0.5 s) of a running job
        assert passes_done(memo) == before
        await patch_job(cluster, "tiny", {"metadata": {"labels": {"touched": "yes"}}})
        await eventually(lambda: passes_done(memo) > before, what="a pass on the job's own event")
        assert job_status(cluster)["phase"] == "Complete"


async def test_steps_reach_the_metrics_at_once_and_the_status_when_due(cluster):
    telemetry = Telemetry()
    cfg = dataclasses.replace(FAST, resync_seconds=0.2, progress_status_seconds=4.0)
    async with running_operator(cluster, cfg, telemetry=telemetry) as memo:
        await create_job(cluster, tiny_job())
        await eventually(lambda: len(pods_of(cluster, 1)) == 2, what="generation 1")
        await run_all(cluster, 1, step=10, telemetry=telemetry)
        await eventually(lambda: job_status(cluster).get("phase") == "Running", what="Running")
        rank0 = telemetry.answers["10.0.1.0"]

        def step_metric() -> float | None:
            labels = {"name": "tiny", "namespace": cluster.namespace}
            return memo.metrics.registry.get_sample_value("shardwright_trainingjob_step", labels)

        def status_writes() -> int:
            return len(sent(cluster, "PATCH", lambda p: p.endswith("/tiny/status")))

        await asyncio.sleep(4.5)  # the status written for Running is now older than 4 s
        writes = status_writes()
        for step in range(11, 41):  # 3 s of training: one progress write at most
            rank0["step"] = step
            await asyncio.sleep(0.1)
        await eventually(lambda: step_metric() == 40, what="step 40 in the metrics")
        assert status_writes() - writes <= 1, sent(cluster, "PATCH", lambda p: p.endswith("/status"))
        await eventually(lambda: job_status(cluster).get("step") == 40, timeout=6, what="step 40 written when due")

        # A new checkpoint is something a user acts on: written at the next pass, not when due.
        written = status_writes()
        rank0["lastCheckpoint"] = {**rank0["lastCheckpoint"], "step": 40, "path": f"/checkpoints/{cluster.namespace}/tiny/step-00000040"}
        await eventually(lambda: job_status(cluster).get("lastCheckpoint", {}).get("step") == 40, timeout=2, what="checkpoint 40")
        assert status_writes() > written
