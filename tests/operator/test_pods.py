"""Pure pieces of the Kubernetes backend: rendering, pod classification (a Ray generation's
head and worker pods too), force-delete, launch env."""

from __future__ import annotations

import dataclasses
import datetime
from pathlib import Path

import yaml

from shardwright.operator.api import RankState, validate
from shardwright.operator.backends import pods as render
from shardwright.operator.backends import podstatus
from shardwright.operator.controller import JobRef, StartGeneration, worker_config
from shardwright.operator.planner import plan_uniform
from shardwright.workers.launch import child_environ, worst

ROOT = Path(__file__).resolve().parents[2]
NOW = datetime.datetime(2026, 11, 22, 12, 0, tzinfo=datetime.timezone.utc)


def start_action(**workers):
    doc = yaml.safe_load((ROOT / "examples" / "tiny-train.yaml").read_text())
    doc["spec"]["workers"] = [{"name": "a", "replicas": 2, "ranksPerReplica": 2, **workers}]
    job, problems = validate(doc)
    assert not problems, problems
    plan = plan_uniform(job.spec)
    config = worker_config(JobRef("tiny", "default", "/c"), job.spec, plan, 3, None)
    return job, StartGeneration(3, plan, config)


def test_pods_carry_each_replicas_first_rank_and_gang_metadata():
    job, action = start_action()
    owner = render.Owner("tiny", "default", "u1", labels={"scheduling.volcano.sh/queue-name": "team-a"})
    settings = render.PodSettings(gang_scheduler="volcano")
    pods = render.render_pods(owner, action, {g.name: g for g in job.spec.workers}, settings)
    assert [p["metadata"]["name"] for p in pods] == ["tiny-g3-a-0", "tiny-g3-a-1"]
    env = {e["name"]: e.get("value", e.get("valueFrom")) for e in pods[1]["spec"]["containers"][0]["env"]}
    assert env["RANK"] == "2" and env["LOCAL_WORLD_SIZE"] == "2" and env["WORLD_SIZE"] == "4"
    assert pods[0]["spec"]["schedulerName"] == "volcano"
    group = render.render_pod_group(owner, action, settings, len(pods))
    assert group["spec"] == {"minMember": 2, "queue": "team-a"}
    assert render.render_pod_group(owner, action, render.PodSettings(), len(pods)) is None


def pod(**status):
    base = {"name": "p", "generation": 1, "rank": 2, "ranks": 2, "phase": "Pending", "created": "2026-11-22T11:55:00Z"}
    return base | status


def test_classification_names_the_reason():
    cases = [
        (pod(phase="Failed", terminated={"exitCode": 137, "reason": "OOMKilled"}), RankState.FAILED, "OOMKilled"),
        (pod(phase="Failed", reason="Evicted", message="low on memory"), RankState.FAILED, "Evicted"),
        (pod(phase="Unknown", node="n1"), RankState.FAILED, "NodeLost"),
        (pod(phase="Pending", waiting="ImagePullBackOff"), RankState.PENDING, "ImagePullBackOff"),
        (pod(phase="Pending", unschedulable="0/3 nodes have enough nvidia.com/gpu"), RankState.PENDING, "Unschedulable"),
        (pod(phase="Succeeded"), RankState.SUCCEEDED, ""),
    ]
    for summary, state, why in cases:
        got, _code, message = podstatus.classify(summary, NOW, startup_timeout_s=None)
        assert got is state and why in message, (summary, got, message)
    state, _, message = podstatus.classify(pod(waiting="ErrImagePull"), NOW, startup_timeout_s=60)
    assert state is RankState.FAILED and "PodsReadyTimeout" in message and "ErrImagePull" in message
    ranks = podstatus.observe_pod(pod(phase="Running"), NOW)
    assert [r.rank for r in ranks] == [2, 3]
    # Being evicted while it still runs: disrupted already (a peer's failure is not the job's).
    assert [r.disrupted for r in podstatus.observe_pod(pod(phase="Running", disruption="TerminationByKubelet"), NOW)] == [True, True]
    assert [r.disrupted for r in ranks] == [False, False]


def test_a_pod_ended_from_outside_marks_its_ranks_as_the_cause():
    died = {
        "OOMKilled": pod(phase="Failed", terminated={"exitCode": 137, "reason": "OOMKilled"}),
        "SIGKILL": pod(phase="Failed", terminated={"exitCode": 137, "reason": "Error"}),
        "Evicted": pod(phase="Failed", reason="Evicted"),
        "NodeLost": pod(phase="Unknown", node="n1"),
    }
    raised = pod(phase="Failed", terminated={"exitCode": 1, "reason": "Error", "message": "DistBackendError"})
    for name, summary in died.items():
        assert all(r.died for r in podstatus.observe_pod(summary, NOW)), name
    assert not any(r.died for r in podstatus.observe_pod(raised, NOW))


def test_only_pods_terminating_on_a_not_ready_node_past_the_grace_are_forced():
    terminating = [
        pod(name="old-on-dead", node="dead", deleting="2026-11-22T11:50:00Z"),
        pod(name="new-on-dead", node="dead", deleting="2026-11-22T11:59:50Z"),
        pod(name="old-on-live", node="live", deleting="2026-11-22T11:50:00Z"),
        pod(name="running", node="dead"),
    ]
    assert podstatus.stuck_terminating(terminating, {"dead": False, "live": True}, NOW, grace_s=60) == ["old-on-dead"]


def test_summary_of_a_real_pod_shape():
    _, action = start_action()
    owner = render.Owner("tiny", "default", "u1")
    manifest = render.render_pods(owner, action, {"a": validate_group()}, render.PodSettings())[1]
    manifest["status"] = {"phase": "Failed", "containerStatuses": [{"state": {"terminated": {"exitCode": 1, "reason": "Error"}}}]}
    summary = podstatus.summarize(manifest)
    assert summary["generation"] == 3 and summary["rank"] == 2 and summary["ranks"] == 2
    assert summary["terminated"]["exitCode"] == 1


def validate_group():
    job, _ = start_action()
    return job.spec.workers[0]


def test_launch_env_and_exit_code():
    env = {"RANK": "4", "WORLD_SIZE": "8", "SHARDWRIGHT_TELEMETRY_PORT": "9400"}
    child = child_environ(env, 1)
    assert child["RANK"] == "5" and child["LOCAL_RANK"] == "1" and child["SHARDWRIGHT_TELEMETRY_PORT"] == "9401"
    assert worst([0, 0]) == 0 and worst([0, 137]) == 137 and worst([0, -9]) == 137


def test_a_pod_is_pinned_to_the_node_all_its_ranks_were_planned_on():
    job, action = start_action()  # 2 replicas x 2 ranks
    nodes = ["n1", "n1", "n2", None]  # replica 0 agrees on n1; replica 1 is partly unplaced
    plan = dataclasses.replace(action.plan, ranks=tuple(
        dataclasses.replace(r, node=n) for r, n in zip(action.plan.ranks, nodes, strict=True)))
    pinned = StartGeneration(action.generation, plan, action.config)
    pods = render.render_pods(render.Owner("tiny", "default", "u1"), pinned, {g.name: g for g in job.spec.workers}, render.PodSettings())
    terms = pods[0]["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
    assert terms == [{"matchExpressions": [{"key": "kubernetes.io/hostname", "operator": "In", "values": ["n1"]}]}]
    assert "affinity" not in pods[1]["spec"]
    ranks = action.plan.ranks[:2]
    assert render.node_affinity([dataclasses.replace(r, node=n) for r, n in zip(ranks, ["a", "b"])]) is None  # disagree
    assert render.node_affinity(list(ranks)) is None  # the uniform plan places nothing


def test_avoided_nodes_are_kept_out_of_every_pod_pinned_or_not():
    job, action = start_action()
    plan = dataclasses.replace(action.plan, ranks=tuple(
        dataclasses.replace(r, node=n) for r, n in zip(action.plan.ranks, ["n1", "n1", None, None], strict=True)))
    pods = render.render_pods(render.Owner("tiny", "default", "u1"), StartGeneration(3, plan, action.config),
                              {g.name: g for g in job.spec.workers}, render.PodSettings())
    kept = [render.avoid_nodes(p, ["n3", "n2"]) for p in pods]
    avoid = {"key": "kubernetes.io/hostname", "operator": "NotIn", "values": ["n2", "n3"]}
    terms = [p["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"] for p in kept]
    assert terms[0] == [{"matchExpressions": [{"key": "kubernetes.io/hostname", "operator": "In", "values": ["n1"]}, avoid]}]
    assert terms[1] == [{"matchExpressions": [avoid]}]
    assert "affinity" not in pods[1]["spec"]  # the input is left as it was
    assert render.avoid_nodes(pods[1], []) is pods[1]
    # The pod index reads it back: what a readmit compares with the job's avoided nodes.
    assert [podstatus.summarize(p)["avoids"] for p in kept[:2]] == [["n2", "n3"], ["n2", "n3"]]
    assert podstatus.summarize(pods[0])["avoids"] == []


def test_unschedulable_ranks_name_the_nodes_the_job_avoids():
    from kubernetes import client

    from shardwright.operator.backends.kubernetes import KubernetesBackend, KubernetesSettings

    job, _ = start_action()
    pending = [pod(unschedulable="0/3 nodes are available: 3 node(s) didn't match Pod's node affinity/selector"),
               pod(name="q", rank=0, waiting="ImagePullBackOff")]
    backend = KubernetesBackend(client.ApiClient(), KubernetesSettings(probe_progress=False), render.Owner("tiny", "default", "u1"),
                                job.spec, pending, avoided_nodes=["n2"])
    messages = [r.message for r in backend.observe(NOW).ranks]
    assert messages[0].startswith("Unschedulable: 0/3 nodes") and messages[0].endswith("this job avoids nodes n2 (status.avoidedNodes)")
    assert "avoids" not in messages[2]  # not a scheduling problem


def test_ranks_on_a_node_not_ready_or_gone_are_on_a_lost_node():
    """What they do not do (report steps, end) is their node's doing: a progress deadline
    passed meanwhile spends no restart (cluster chaos seed 1101)."""
    from kubernetes import client

    from shardwright.operator.backends.kubernetes import KubernetesBackend, KubernetesSettings

    job, _ = start_action()
    running = [pod(name="p0", rank=0, phase="Running", node="n0"), pod(name="p1", rank=2, phase="Running", node="n1")]

    def lost(node_ready: dict[str, bool] | None) -> list[bool]:
        backend = KubernetesBackend(client.ApiClient(), KubernetesSettings(probe_progress=False), render.Owner("tiny", "default", "u1"),
                                    job.spec, running, node_ready=node_ready)
        return [r.node_lost for r in backend.observe(NOW).ranks]

    assert lost({"n0": True, "n1": True}) == [False] * 4
    assert lost({"n0": True, "n1": False}) == [False, False, True, True]
    assert lost({"n0": True}) == [False, False, True, True]  # n1 is gone
    assert lost(None) == [False] * 4  # no node list: nothing known


def test_a_vanished_rank_went_with_a_node_that_is_lost_or_was_lost_during_its_generation():
    """Seed 1402: a node lost, its pods evicted, the node Ready again before the operator
    saw the pod gone. NotReady since the generation started is enough: a disruption."""
    from shardwright.operator.controller import RankObservation
    from shardwright.operator.api import RankState
    from shardwright.operator.jobpass import _back_since

    gone = podstatus.vanished_ranks(3, 2, True, [RankObservation(3, 1, RankState.RUNNING)])[0]
    assert not gone.disrupted
    ready = {"n0": True, "n1": False}
    assert podstatus.gone_with_its_node(gone, "n1", ready).disrupted
    assert podstatus.gone_with_its_node(gone, "n9", ready).message.endswith("its node n9 is NotReady or gone")
    assert podstatus.gone_with_its_node(gone, "n0", ready) is gone  # deleted from a healthy node: a failure
    back = podstatus.gone_with_its_node(gone, "n0", ready, frozenset({"n0"}))
    assert back.disrupted and back.message.endswith("its node n0 was NotReady during this generation")
    assert podstatus.gone_with_its_node(gone, None, ready) is gone and podstatus.gone_with_its_node(gone, "n1", None) is gone

    def node(name: str, ready: str, since: str) -> dict:
        return {"metadata": {"name": name}, "status": {"conditions": [{"type": "Ready", "status": ready, "lastTransitionTime": since}]}}

    nodes = [node("n0", "True", "2026-12-07T20:52:40Z"), node("n1", "True", "2026-12-07T19:00:00Z"), node("n2", "False", "2026-12-07T20:53:00Z")]
    assert _back_since(nodes, {"n0", "n1", "n2"}, "2026-12-07T20:52:23Z") == {"n0"}
    assert _back_since(nodes, {"n1", "n2"}, "2026-12-07T20:52:23Z") == frozenset()  # not this job's node
    assert _back_since(nodes, {"n0"}, None) == frozenset()


def test_a_probe_of_a_port_that_answers_garbage_counts_as_no_answer():
    """A dead rank's telemetry port can be taken by another process (gloo, for one), which
    answers bytes that are not HTTP: that is no answer, not an error in the control loop."""
    import socket
    import threading

    from shardwright.operator.backends.probe import fetch_text, request_json

    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()

        def garbage() -> None:
            for _ in range(2):
                conn, _ = server.accept()
                with conn:
                    conn.recv(1024)
                    conn.sendall(b"\x00\x05\x00@\x00\xfe\x03\n\r\n")

        threading.Thread(target=garbage, daemon=True).start()
        url = f"http://127.0.0.1:{server.getsockname()[1]}"
        assert request_json(f"{url}/status") is None and fetch_text(f"{url}/metrics") is None


# ----------------------------------------------------------------------------- runtime: ray, the head decides

P, R, S, F = RankState.PENDING, RankState.RUNNING, RankState.SUCCEEDED, RankState.FAILED


def summary(role: str, rank: int, phase: str, **fields) -> dict:
    base = {"name": f"{role}-{rank}", "generation": 1, "role": role, "rank": rank, "ranks": 2 if role == render.ROLE_RAY_HEAD else 1,
            "phase": phase, "created": "2026-11-22T11:59:00Z"}
    return base | fields


def head(phase: str, **fields) -> dict:
    return summary(render.ROLE_RAY_HEAD, 0, phase, **fields)


def worker(rank: int, phase: str, **fields) -> dict:
    return summary(render.ROLE_RAY_WORKER, rank, phase, **fields)


def seen(*pods: dict) -> list[tuple[RankState, str]]:
    return [(r.state, r.message) for r in sorted(podstatus.observe_pods(list(pods), NOW), key=lambda r: r.rank)]


def test_the_head_decides_and_a_worker_pod_names_its_own_failure():
    oom = {"terminated": {"exitCode": 137, "reason": "OOMKilled"}}
    # Starting: ranks wait for the head (why it is pending is theirs too), then each for its pod.
    assert seen(head("Pending", unschedulable="0/3 nodes"), worker(0, "Running"), worker(1, "Running")) == [
        (P, "Unschedulable: 0/3 nodes"), (P, "Unschedulable: 0/3 nodes")]
    assert seen(head("Running"), worker(0, "Running"), worker(1, "Pending", waiting="ImagePullBackOff")) == [
        (R, ""), (P, "ImagePullBackOff")]
    # A worker pod that left (it does when the head goes) says nothing; its own failure does.
    assert [s for s, _ in seen(head("Running"), worker(0, "Running"), worker(1, "Succeeded"))] == [R, R]
    assert seen(head("Running"), worker(0, "Running"), worker(1, "Failed", **oom))[1][0] is F
    failed = seen(head("Failed", terminated={"exitCode": 1, "reason": "Error", "message": "Rank 0 failed: boom"}),
                  worker(0, "Running"), worker(1, "Failed", **oom))
    assert failed[0] == (F, "Error: Rank 0 failed: boom") and failed[1][0] is F and "OOMKilled" in failed[1][1]
    # The head finished: every rank did, whatever the worker pods do as they leave.
    assert [s for s, _ in seen(head("Succeeded"), worker(0, "Running"), worker(1, "Failed", **oom))] == [S, S]


def test_without_a_head_the_worker_pods_are_alive_until_they_leave():
    assert seen(worker(0, "Running"), worker(1, "Succeeded")) == [(R, ""), (F, "the Ray head of this generation is gone")]


def test_torch_pods_beside_a_ray_generation_are_read_one_by_one():
    torch_pod = {"name": "t", "generation": 2, "rank": 0, "ranks": 2, "phase": "Running", "created": "2026-11-22T11:59:00Z"}
    ranks = podstatus.observe_pods([head("Running"), worker(0, "Running"), worker(1, "Running"), torch_pod], NOW)
    assert sorted((r.generation, r.rank, r.state) for r in ranks) == [(1, 0, R), (1, 1, R), (2, 0, R), (2, 1, R)]
