"""Straggler mitigation on the local control plane: rank 0's /status (played by the test) shows
rank 1 computing at half speed. ``rebalance``: the operator POSTs new work shares to rank
0's pod until rank 0 reports them. ``replace``: the next generation keeps off rank 1's node
(required NotIn node affinity), the node is listed in ``status.avoidedNodes`` and cordoned
when the policy asks and the operator may; a restarted operator keeps avoiding it, until
the job's ``spec.readmit`` takes it back (acknowledged in ``status.readmitted``)."""

from __future__ import annotations

import dataclasses

import pytest

from tests.stragglers.timings import steps

from .kubeapi import (
    FAST, NODES, TJ, Telemetry, add_node, bind_pod, create_job, eventually, get, job_status, passes, patch_job, pods_of,
    posted_events, run_all, running_operator, sent, set_pod_phase, tiny_job,
)

pytestmark = pytest.mark.cluster

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


async def three_nodes(cluster) -> tuple[str, str, str]:
    """Nodes a, b, c (no kubelet; the test binds pods to them)."""
    return tuple([await add_node(cluster, f"{cluster.namespace}-{x}") for x in "abc"])


def avoiding(node: str) -> dict:
    return {"matchExpressions": [{"key": "kubernetes.io/hostname", "operator": "NotIn", "values": [node]}]}


def node_terms(pod: dict) -> list[dict] | None:
    affinity = pod["spec"].get("affinity")
    return affinity and affinity["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]


async def start_generation_on_nodes(cluster, generation: int, nodes: tuple[str, ...]) -> None:
    """Wait for the generation's two pods, play the scheduler (rank i on nodes[i]) and the kubelet."""
    await eventually(lambda: len(pods_of(cluster, generation)) == 2, what=f"generation {generation}")
    for i, name in enumerate(sorted(pods_of(cluster, generation))):
        await bind_pod(cluster, name, nodes[i])
    await run_all(cluster, generation)
    await eventually(lambda: job_status(cluster).get("phase") == "Running", what=f"generation {generation} running")


async def rebalanced(cluster, telemetry: Telemetry) -> list[float]:
    """Rank 0 reports rank 1 slow; returns the shares the operator POSTed to rank 0."""
    telemetry.answers["10.0.1.0"] = rank0_status(1, 30)
    await eventually(lambda: telemetry.posts, what="new shares POSTed to rank 0")
    url, payload = telemetry.posts[0]
    assert url == "http://10.0.1.0:9400/control"  # rank 0's pod IP, the telemetry port
    return payload["dataShares"]


async def test_rebalance_posts_shares_to_rank_0_until_it_reports_them(cluster):
    a, b, _ = await three_nodes(cluster)
    telemetry = Telemetry()
    async with running_operator(cluster, telemetry=telemetry) as memo:
        await create_job(cluster, tiny_job(stragglerPolicy={"action": "rebalance"}))
        await start_generation_on_nodes(cluster, 1, (a, b))
        shares = await rebalanced(cluster, telemetry)
        assert len(shares) == 2 and shares[1] < 0.75 < 1.25 < shares[0]  # work moves off the slow rank
        status = await eventually(lambda: job_status(cluster).get("dataShares") and job_status(cluster), what="shares in status")
        assert status["dataShares"] == shares
        (flag,) = status["stragglers"]
        assert (flag["rank"], flag["node"], flag["action"]) == (1, b, "rebalance")
        degraded = next(c for c in status["conditions"] if c["type"] == "Degraded")
        assert degraded["status"] == "True" and degraded["reason"] == "StragglerDetected"
        # Events go out after the pass's status write: wait for them.
        await eventually(lambda: any(f"Rank 1 on {b}" in m for m in posted_events(cluster, "StragglerDetected")), what="event")
        # Level-triggered: repeated while rank 0 does not show the shares, not after.
        await eventually(lambda: len(telemetry.posts) >= 3, what="the POST repeated")
        assert all(p == (telemetry.posts[0][0], {"dataShares": shares}) for p in telemetry.posts)
        telemetry.answers["10.0.1.0"] = rank0_status(1, 31, shares)
        await passes(memo, 3)  # a pass in flight may still post once
        settled = len(telemetry.posts)
        await passes(memo, 3)
        assert len(telemetry.posts) == settled
        assert not get(cluster, "v1/pods", "tiny-g1-worker-0")["spec"].get("affinity")  # nothing avoided
        assert not job_status(cluster).get("avoidedNodes")


async def replaced(cluster, telemetry: Telemetry) -> None:
    """Rank 1 stays slow after rebalancing, past the cool-down (window 20): replaced."""
    shares = await rebalanced(cluster, telemetry)
    telemetry.answers["10.0.1.0"] = rank0_status(1, 55, shares)
    await eventually(lambda: len(pods_of(cluster, 2)) == 2 and not pods_of(cluster, 1), what="generation 2 replaces generation 1")


def cordoned(cluster, node: str) -> bool:
    return bool(get(cluster, NODES, node)["spec"].get("unschedulable"))


async def test_replace_avoids_and_cordons_the_node_also_after_an_operator_restart(cluster):
    a, b, c = await three_nodes(cluster)
    telemetry = Telemetry()
    cordoning = dataclasses.replace(FAST, kubernetes=dataclasses.replace(FAST.kubernetes, cordon_nodes=True))
    job = tiny_job(stragglerPolicy={"action": "replace", "cordon": True}, failurePolicy=NO_BACKOFF)
    async with running_operator(cluster, cordoning, telemetry=telemetry) as memo:
        await create_job(cluster, job)
        await start_generation_on_nodes(cluster, 1, (a, b))
        assert all(node_terms(p) is None for p in pods_of(cluster, 1).values())
        await replaced(cluster, telemetry)
        # Generation 1 stopped gracefully: the kubelet gave its ranks time to checkpoint.
        assert sorted(cluster.kubelet.stopped) == [("tiny-g1-worker-0", 120), ("tiny-g1-worker-1", 120)]
        assert all(node_terms(p) == [avoiding(b)] for p in pods_of(cluster, 2).values())
        status = await eventually(lambda: job_status(cluster).get("generation") == 2 and job_status(cluster))
        assert status["avoidedNodes"] == [b] and status["restarts"] == 0
        assert cordoned(cluster, b) and not cordoned(cluster, a) and not cordoned(cluster, c)
        # The node lifecycle controller turns the cordon into the taint the scheduler reads.
        await eventually(lambda: any(t["key"] == "node.kubernetes.io/unschedulable" for t in get(cluster, NODES, b)["spec"].get("taints", [])),
                         what="the unschedulable taint")
        await eventually(lambda: posted_events(cluster, "NodeAvoided") and posted_events(cluster, "NodeCordoned"), what="events")
        await passes(memo, 2)  # a cordon is done once
        assert len(node_patches(cluster)) == 1

    # A new operator (nothing in memory) fails generation 2: generation 3 still avoids node b.
    async with running_operator(cluster, cordoning, telemetry=telemetry):
        await run_all(cluster, 2)
        await set_pod_phase(cluster, "tiny-g2-worker-1", "Failed", exit_code=1)
        await eventually(lambda: len(pods_of(cluster, 3)) == 2, what="generation 3")
        assert all(node_terms(p) == [avoiding(b)] for p in pods_of(cluster, 3).values())
        await eventually(lambda: job_status(cluster).get("generation") == 3, what="status generation 3")
        assert job_status(cluster)["avoidedNodes"] == [b] and len(node_patches(cluster)) == 1


async def test_replace_without_cordon_permission_still_avoids_the_node(cluster):
    a, b, _ = await three_nodes(cluster)
    telemetry = Telemetry()
    job = tiny_job(stragglerPolicy={"action": "replace", "cordon": True})
    async with running_operator(cluster, telemetry=telemetry):  # chart default: cordonNodes false
        await create_job(cluster, job)
        await start_generation_on_nodes(cluster, 1, (a, b))
        await replaced(cluster, telemetry)
        assert all(node_terms(p) == [avoiding(b)] for p in pods_of(cluster, 2).values())
        await eventually(lambda: job_status(cluster).get("avoidedNodes") == [b], what="node b avoided")
        (warning,) = await eventually(lambda: posted_events(cluster, "CordonFailed"), what="CordonFailed event")
        assert "cordonNodes: false" in warning and "avoids it all the same" in warning
        assert not node_patches(cluster) and not cordoned(cluster, b)


async def readmit(cluster, *nodes: str) -> None:
    """``spec.readmit.nodes`` set; returns once the operator acknowledged it (the spec stays as written)."""
    await patch_job(cluster, "tiny", {"spec": {"readmit": {"nodes": list(nodes)}}})
    await eventually(lambda: job_status(cluster).get("readmitted") == {"nodes": list(nodes), "token": ""}, what="readmit acknowledged")
    assert get(cluster, TJ, "tiny")["spec"]["readmit"] == {"nodes": list(nodes)}


async def test_a_readmitted_node_is_used_again_by_later_generations(cluster):
    a, b, c = await three_nodes(cluster)
    telemetry = Telemetry()
    async with running_operator(cluster, telemetry=telemetry) as memo:
        await create_job(cluster, tiny_job(stragglerPolicy={"action": "replace"}, failurePolicy=NO_BACKOFF))
        await start_generation_on_nodes(cluster, 1, (a, b))
        await replaced(cluster, telemetry)
        for name, node in zip(sorted(pods_of(cluster, 2)), (a, c)):
            await bind_pod(cluster, name, node)
        await run_all(cluster, 2)
        await eventually(lambda: job_status(cluster).get("avoidedNodes") == [b], what="node b avoided")
        await readmit(cluster, b, "node-x")  # node b was repaired; node-x is a typo
        await eventually(lambda: not job_status(cluster).get("avoidedNodes"), what="node b readmitted")
        (told,) = await eventually(lambda: posted_events(cluster, "NodeReadmitted"), what="NodeReadmitted")
        assert told == f"Later generations may run on {b} again (spec.readmit)"
        (warned,) = await eventually(lambda: posted_events(cluster, "ReadmitIgnored"), what="ReadmitIgnored")
        assert warned == f"Not avoided by this job, nothing to readmit: node-x (status.avoidedNodes: {b})"
        # The running generation keeps its pods; the next one may use node b again.
        await passes(memo, 2)
        assert not pods_of(cluster, 3) and all(node_terms(p) == [avoiding(b)] for p in pods_of(cluster, 2).values())
        await set_pod_phase(cluster, "tiny-g2-worker-1", "Failed", exit_code=1)
        await eventually(lambda: len(pods_of(cluster, 3)) == 2, what="generation 3")
        assert all(node_terms(p) is None for p in pods_of(cluster, 3).values())
        assert len(posted_events(cluster, "NodeReadmitted")) == 1 and not job_status(cluster).get("avoidedNodes")


async def test_a_generation_waiting_for_the_readmitted_node_starts_again_at_once(cluster):
    a, b, _ = await three_nodes(cluster)
    telemetry = Telemetry()
    async with running_operator(cluster, telemetry=telemetry):
        await create_job(cluster, tiny_job(stragglerPolicy={"action": "replace"}))
        await start_generation_on_nodes(cluster, 1, (a, b))
        await replaced(cluster, telemetry)  # generation 2's pods keep off node b and wait for a node
        assert all(node_terms(p) == [avoiding(b)] for p in pods_of(cluster, 2).values())
        await readmit(cluster, b)
        await eventually(lambda: len(pods_of(cluster, 3)) == 2 and not pods_of(cluster, 2), what="generation 3 replaces generation 2")
        assert all(node_terms(p) is None for p in pods_of(cluster, 3).values())
        status = await eventually(lambda: job_status(cluster).get("generation") == 3 and job_status(cluster), what="status generation 3")
        assert status["restarts"] == 0 and not status.get("avoidedNodes")
        said = await eventually(lambda: len(posted_events(cluster, "NodeReadmitted")) == 2 and posted_events(cluster, "NodeReadmitted"), what="events")
        assert sorted(said) == [
            f"Generation 2 starts again: pod tiny-g2-worker-0 waits for a node and keeps off {b}, which the job no longer avoids",
            f"Later generations may run on {b} again (spec.readmit)",
        ]


def node_patches(cluster) -> list:
    """The operator's requests to change a Node: a cordon sent twice changes nothing on the server."""
    return sent(cluster, "PATCH", lambda p: p.startswith("/api/v1/nodes/"))
