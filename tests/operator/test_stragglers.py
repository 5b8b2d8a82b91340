"""Straggler mitigation on the mock cluster: rank 0's /status (played by the test) shows
rank 1 computing at half speed. ``rebalance``: the operator POSTs new work shares to rank
0's pod until rank 0 reports them. ``replace``: the next generation keeps off rank 1's node
(required NotIn node affinity), the node is listed in ``status.avoidedNodes`` and cordoned
when the policy asks and the operator may; a restarted operator keeps avoiding it, until
the job's ``shardwright.io/readmit-nodes`` annotation takes it back."""

from __future__ import annotations

import asyncio
import dataclasses

from tests.stragglers.timings import steps

from .mockapi import (
    FAST, PODS, TJ, Telemetry, api, bind_pod, create_job, eventually, job_status, live, patch_job, posted_events,
    run_all, running_operator, set_pod_phase, tiny_job,
)

NODES = ("node-a", "node-b", "node-c")
AVOID_B = {"matchExpressions": [{"key": "kubernetes.io/hostname", "operator": "NotIn", "values": ["node-b"]}]}
NO_BACKOFF = {"backoff": {"initialSeconds": 0, "maxSeconds": 0}}


def rank0_status(generation: int, last_step: int, shares: list[float] | None = None) -> dict:
    """Rank 0's /status after ``last_step`` steps in which rank 1 computed at half speed."""
    timings = [
        {"step": t.step, "compute": list(t.compute), "wait": list(t.wait), "samples": list(t.samples), "busy": list(t.busy)}
        for t in steps(last_step, slow={1: 2.0})
    ]
    return {
        "generation": generation, "step": last_step, "loss": 2.0, "tokensPerSecond": 1000.0,
        "stepSeconds": [0.4, 0.4], "stepTimings": timings[-64:], "dataShares": shares,
        "sharesSinceStep": last_step if shares else None,
    }


def pods_of(kmock, generation: int) -> dict[str, dict]:
    return {n: p for n, p in live(kmock, PODS).items() if p["metadata"]["labels"]["shardwright.io/generation"] == str(generation)}


def node_terms(pod: dict) -> list[dict] | None:
    affinity = pod["spec"].get("affinity")
    return affinity and affinity["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]


async def start_generation_on_nodes(kmock, generation: int) -> None:
    """Wait for the generation's two pods, play the scheduler (rank i on NODES[i]) and the kubelet."""
    await eventually(lambda: len(pods_of(kmock, generation)) == 2, what=f"generation {generation}")
    for i, name in enumerate(sorted(pods_of(kmock, generation))):
        await bind_pod(kmock, name, NODES[i])
    await run_all(kmock, generation)
    await eventually(lambda: job_status(kmock).get("phase") == "Running", what=f"generation {generation} running")


async def rebalanced(kmock, telemetry: Telemetry) -> list[float]:
    """Rank 0 reports rank 1 slow; returns the shares the operator POSTed to rank 0."""
    telemetry.answers["10.0.1.0"] = rank0_status(1, 30)
    await eventually(lambda: telemetry.posts, what="new shares POSTed to rank 0")
    url, payload = telemetry.posts[0]
    assert url == "http://10.0.1.0:9400/control"  # rank 0's pod IP, the telemetry port
    return payload["dataShares"]


async def test_rebalance_posts_shares_to_rank_0_until_it_reports_them(cluster):
    telemetry = Telemetry()
    async with running_operator(telemetry=telemetry):
        await create_job(cluster, tiny_job(stragglerPolicy={"action": "rebalance"}))
        await start_generation_on_nodes(cluster, 1)
        shares = await rebalanced(cluster, telemetry)
        assert len(shares) == 2 and shares[1] < 0.75 < 1.25 < shares[0]  # work moves off the slow rank
        status = await eventually(lambda: job_status(cluster).get("dataShares") and job_status(cluster), what="shares in status")
        assert status["dataShares"] == shares
        (flag,) = status["stragglers"]
        assert (flag["rank"], flag["node"], flag["action"]) == (1, "node-b", "rebalance")
        degraded = next(c for c in status["conditions"] if c["type"] == "Degraded")
        assert degraded["status"] == "True" and degraded["reason"] == "StragglerDetected"
        # Events go out after the pass's status write: wait for them.
        await eventually(lambda: any("Rank 1 on node-b" in m for m in posted_events(cluster, "StragglerDetected")), what="event")
        # Level-triggered: repeated while rank 0 does not show the shares, not after.
        await eventually(lambda: len(telemetry.posts) >= 3, what="the POST repeated")
        assert all(p == (telemetry.posts[0][0], {"dataShares": shares}) for p in telemetry.posts)
        telemetry.answers["10.0.1.0"] = rank0_status(1, 31, shares)
        await asyncio.sleep(1.5)  # three resync periods: a pass in flight may still post once
        settled = len(telemetry.posts)
        await asyncio.sleep(1.5)
        assert len(telemetry.posts) == settled
        assert not live(cluster, PODS)["tiny-g1-worker-0"]["spec"].get("affinity")  # nothing avoided
        assert "avoidedNodes" not in job_status(cluster) or job_status(cluster)["avoidedNodes"] == []


async def replaced(kmock, telemetry: Telemetry) -> None:
    """Rank 1 stays slow after rebalancing, past the cool-down (window 20): replaced."""
    shares = await rebalanced(kmock, telemetry)
    telemetry.answers["10.0.1.0"] = rank0_status(1, 55, shares)
    await eventually(lambda: len(pods_of(kmock, 2)) == 2 and not pods_of(kmock, 1), what="generation 2 replaces generation 1")


async def test_replace_avoids_and_cordons_the_node_also_after_an_operator_restart(cluster):
    for name in NODES:
        await api(cluster, "POST", "/api/v1/nodes", {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name}})
    telemetry = Telemetry()
    cordoning = dataclasses.replace(FAST, kubernetes=dataclasses.replace(FAST.kubernetes, cordon_nodes=True))
    job = tiny_job(stragglerPolicy={"action": "replace", "cordon": True}, failurePolicy=NO_BACKOFF)
    async with running_operator(cordoning, telemetry=telemetry):
        await create_job(cluster, job)
        await start_generation_on_nodes(cluster, 1)
        assert all(node_terms(p) is None for p in pods_of(cluster, 1).values())
        await replaced(cluster, telemetry)
        assert all(node_terms(p) == [AVOID_B] for p in pods_of(cluster, 2).values())
        status = await eventually(lambda: job_status(cluster).get("generation") == 2 and job_status(cluster))
        assert status["avoidedNodes"] == ["node-b"] and status["restarts"] == 0
        nodes = live(cluster, "v1/nodes")
        assert nodes["node-b"]["spec"] == {"unschedulable": True}
        assert not nodes["node-a"].get("spec") and not nodes["node-c"].get("spec")
        await eventually(lambda: posted_events(cluster, "NodeAvoided") and posted_events(cluster, "NodeCordoned"), what="events")
        await asyncio.sleep(1.0)  # two resync periods: a cordon is done once
        assert len(node_patches(cluster)) == 1

    # A new operator (nothing in memory) fails generation 2: generation 3 still avoids node-b.
    async with running_operator(cordoning, telemetry=telemetry):
        await run_all(cluster, 2)
        await set_pod_phase(cluster, "tiny-g2-worker-1", "Failed", exit_code=1)
        await eventually(lambda: len(pods_of(cluster, 3)) == 2, what="generation 3")
        assert all(node_terms(p) == [AVOID_B] for p in pods_of(cluster, 3).values())
        await eventually(lambda: job_status(cluster).get("generation") == 3, what="status generation 3")
        assert job_status(cluster)["avoidedNodes"] == ["node-b"] and len(node_patches(cluster)) == 1


async def test_replace_without_cordon_permission_still_avoids_the_node(cluster):
    await api(cluster, "POST", "/api/v1/nodes", {"apiVersion": "v1", "kind": "Node", "metadata": {"name": "node-b"}})
    telemetry = Telemetry()
    job = tiny_job(stragglerPolicy={"action": "replace", "cordon": True})
    async with running_operator(telemetry=telemetry):  # chart default: cordonNodes false
        await create_job(cluster, job)
        await start_generation_on_nodes(cluster, 1)
        await replaced(cluster, telemetry)
        assert all(node_terms(p) == [AVOID_B] for p in pods_of(cluster, 2).values())
        await eventually(lambda: job_status(cluster).get("avoidedNodes") == ["node-b"], what="node-b avoided")
        (warning,) = await eventually(lambda: posted_events(cluster, "CordonFailed"), what="CordonFailed event")
        assert "cordonNodes: false" in warning and "avoids it all the same" in warning
        assert not node_patches(cluster) and not live(cluster, "v1/nodes")["node-b"].get("spec")


READMIT = "shardwright.io/readmit-nodes"


async def readmit(kmock, nodes: str) -> None:
    """``kubectl annotate tj tiny shardwright.io/readmit-nodes=...``; returns once the operator took it."""
    await patch_job(kmock, "tiny", {"metadata": {"annotations": {READMIT: nodes}}})
    await eventually(lambda: READMIT not in live(kmock, TJ)["tiny"]["metadata"].get("annotations", {}), what="annotation removed")


async def test_a_readmitted_node_is_used_again_by_later_generations(cluster):
    telemetry = Telemetry()
    async with running_operator(telemetry=telemetry):
        await create_job(cluster, tiny_job(stragglerPolicy={"action": "replace"}, failurePolicy=NO_BACKOFF))
        await start_generation_on_nodes(cluster, 1)
        await replaced(cluster, telemetry)
        for name, node in zip(sorted(pods_of(cluster, 2)), ("node-a", "node-c")):
            await bind_pod(cluster, name, node)
        await run_all(cluster, 2)
        await eventually(lambda: job_status(cluster).get("avoidedNodes") == ["node-b"], what="node-b avoided")
        await readmit(cluster, "node-b, node-x")  # node-b was repaired; node-x is a typo
        await eventually(lambda: not job_status(cluster).get("avoidedNodes"), what="node-b readmitted")
        (told,) = await eventually(lambda: posted_events(cluster, "NodeReadmitted"), what="NodeReadmitted")
        assert told == "Later generations may run on node-b again (annotation shardwright.io/readmit-nodes)"
        (warned,) = await eventually(lambda: posted_events(cluster, "ReadmitIgnored"), what="ReadmitIgnored")
        assert warned == "Not avoided by this job, nothing to readmit: node-x (status.avoidedNodes: node-b)"
        # The running generation keeps its pods; the next one may use node-b again.
        await asyncio.sleep(1.0)  # two resync periods
        assert not pods_of(cluster, 3) and all(node_terms(p) == [AVOID_B] for p in pods_of(cluster, 2).values())
        await set_pod_phase(cluster, "tiny-g2-worker-1", "Failed", exit_code=1)
        await eventually(lambda: len(pods_of(cluster, 3)) == 2, what="generation 3")
        assert all(node_terms(p) is None for p in pods_of(cluster, 3).values())
        assert len(posted_events(cluster, "NodeReadmitted")) == 1 and not job_status(cluster).get("avoidedNodes")


async def test_a_generation_waiting_for_the_readmitted_node_starts_again_at_once(cluster):
    telemetry = Telemetry()
    async with running_operator(telemetry=telemetry):
        await create_job(cluster, tiny_job(stragglerPolicy={"action": "replace"}))
        await start_generation_on_nodes(cluster, 1)
        await replaced(cluster, telemetry)  # generation 2's pods keep off node-b and wait for a node
        assert all(node_terms(p) == [AVOID_B] for p in pods_of(cluster, 2).values())
        await readmit(cluster, "node-b")
        await eventually(lambda: len(pods_of(cluster, 3)) == 2 and not pods_of(cluster, 2), what="generation 3 replaces generation 2")
        assert all(node_terms(p) is None for p in pods_of(cluster, 3).values())
        status = await eventually(lambda: job_status(cluster).get("generation") == 3 and job_status(cluster), what="status generation 3")
        assert status["restarts"] == 0 and not status.get("avoidedNodes")
        said = await eventually(lambda: len(posted_events(cluster, "NodeReadmitted")) == 2 and posted_events(cluster, "NodeReadmitted"), what="events")
        assert sorted(said) == [
            "Generation 2 starts again: pod tiny-g2-worker-0 waits for a node and keeps off node-b, which the job no longer avoids",
            "Later generations may run on node-b again (annotation shardwright.io/readmit-nodes)",
        ]


def node_patches(kmock) -> list:
    return [r for r in list(kmock) if r.method == "PATCH" and "/nodes/" in r.url.path]
