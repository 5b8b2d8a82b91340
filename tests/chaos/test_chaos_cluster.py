"""The cluster chaos harness: its plans are the seed's, its checks flag a doctored record,
and one seeded run on the real control plane (a rank pod deleted, a rank killed, the
leading operator killed, the API server restarted, under two training jobs) keeps every
invariant against the fault-free job."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import pytest

from bench import chaos_cluster, chaos_cluster_check, chaos_cluster_plan
from bench.chaos_cluster_env import GEN_LABEL, JOB_LABEL, PodLives
from bench.chaos_cluster_faults import Strike

KINDS = "pod-delete,kill,operator-killed,apiserver-restart"


def test_the_same_seed_draws_the_same_plan_and_another_seed_another():
    assert chaos_cluster_plan.draw(7, 12) == chaos_cluster_plan.draw(7, 12)
    assert chaos_cluster_plan.draw(7, 12) != chaos_cluster_plan.draw(8, 12)
    assert {f.kind for s in range(40) for f in chaos_cluster_plan.draw(s, 10).faults} == set(chaos_cluster_plan.KINDS)


def record(**changes) -> chaos_cluster_check.Record:
    done = {"phase": "Complete", "step": 800, "loss": 0.75, "restarts": 1, "generation": 3, "rejectedCheckpoints": [200]}
    base = dict(statuses={"a": dict(done), "b": {**done, "restarts": 0, "generation": 1, "rejectedCheckpoints": []}},
                strikes=[Strike("kill", "a-g1-worker-0", True, restarts=[("a", 1)]),
                         Strike("corrupt-checkpoint", "a", True, restarts=[("a", 1)], damaged=[("a", 200)]),
                         Strike("node-lost", "proc-1", True, disrupted=[("a", 2)]),
                         Strike("apiserver-restart", "kube-apiserver", True)],
                overlaps=[], leftovers=[], replans_equal=True, generations=frozenset({("a", 1), ("a", 2), ("a", 3), ("b", 1)}))
    return chaos_cluster_check.Record(**{**base, **changes})


def test_the_checks_keep_a_clean_record_and_flag_each_doctored_one():
    reference = {"step": 800, "loss": 0.75}
    assert all(v.ok for v in chaos_cluster_check.check(record(), reference))
    clean = record().statuses
    doctored = {
        "outcome": record(statuses={**clean, "b": {**clean["b"], "phase": "Failed"}}),
        "loss": record(statuses={**clean, "b": {**clean["b"], "loss": 0.7500000000000001}}),
        "restarts": record(statuses={**clean, "a": {**clean["a"], "restarts": 2}}),
        "restarts ": record(statuses={**clean, "b": {**clean["b"], "generation": 2}}),
        "one generation at a time": record(overlaps=["a-g2-worker-0 (generation 2) created while a-g1-worker-1 alive"]),
        "no orphans": record(leftovers=["Service/a"]),
        "rejected only damaged": record(statuses={**clean, "b": {**clean["b"], "rejectedCheckpoints": [100]}}),
        "same seed, same plan": record(replans_equal=False),
    }
    for invariant, run in doctored.items():
        broken = [v.invariant for v in chaos_cluster_check.check(run, reference) if not v.ok]
        assert broken == [invariant.strip()], (invariant, broken)


def test_a_generation_a_kill_and_a_node_loss_both_ended_may_spend_a_restart_or_not():
    """Rank killed while its node was lost (seed 1300): the operator may see either first."""
    both = [Strike("kill", "a-g1-worker-0", True, restarts=[("a", 1)]), Strike("node-lost", "proc-1", True, disrupted=[("a", 1)])]
    for restarts in (0, 1):
        run = record(statuses={"a": {"phase": "Complete", "restarts": restarts, "generation": 2}}, strikes=both)
        assert chaos_cluster_check._restarts(run).ok, restarts
    run = record(statuses={"a": {"phase": "Complete", "restarts": 2, "generation": 2}}, strikes=both)
    assert not chaos_cluster_check._restarts(run).ok


def test_a_failure_struck_beside_a_node_just_lost_may_spend_a_restart_or_not():
    """A pod force-deleted on a node the operator still sees NotReady (seed 1401)."""
    near = [Strike("pod-delete", "a-g1-worker-0", True, restarts=[("a", 1)], either=[("a", 1)])]
    for restarts in (0, 1):
        assert chaos_cluster_check._restarts(record(statuses={"a": {"phase": "Complete", "restarts": restarts, "generation": 2}}, strikes=near)).ok
    far = [Strike("pod-delete", "a-g1-worker-0", True, restarts=[("a", 1)])]
    assert not chaos_cluster_check._restarts(record(statuses={"a": {"phase": "Complete", "restarts": 0, "generation": 2}}, strikes=far)).ok


def test_a_generation_that_never_made_a_pod_is_started_again_without_a_restart():
    """The operator killed between the status naming generation 2 and its pods (seed 1400):
    generation 3 follows, the budget unspent; spending one for it is flagged."""
    made = frozenset({("a", 1), ("a", 3), ("b", 1)})
    run = record(statuses={**record().statuses, "a": {**record().statuses["a"], "generation": 4}},
                 strikes=[Strike("kill", "a-g1-worker-0", True, restarts=[("a", 1)]), Strike("node-lost", "proc-1", True, disrupted=[("a", 3)])],
                 generations=made)
    assert chaos_cluster_check._restarts(run).ok
    spent = record(statuses={**run.statuses, "a": {**run.statuses["a"], "restarts": 2}}, strikes=run.strikes, generations=made)
    assert not chaos_cluster_check._restarts(spent).ok
    assert not chaos_cluster_check._restarts(record(statuses=run.statuses, strikes=run.strikes, generations=None)).ok  # not recorded: no allowance


def test_a_saved_record_checks_again_as_it_did(tmp_path):
    run = record()
    path = tmp_path / "record-1.json"
    path.write_text(json.dumps({"reference": {"step": 800, "loss": 0.75}, **run.to_json()}))
    again = chaos_cluster_check.Record.from_json(json.loads(path.read_text()))
    assert again == run and chaos_cluster.main(["--check", str(path)]) == 0
    path.write_text(json.dumps({"reference": {"step": 800, "loss": 0.5}, **run.to_json()}))
    assert chaos_cluster.main(["--check", str(path)]) == 1


def test_a_node_loss_ends_the_generations_whose_pods_there_began_to_end_in_its_window():
    """Deleted, or asked to stop (a rank then exits 0, Succeeded): ended by the node loss.
    Succeeded on its own (the job finished), or ended outside the window: not."""
    def pod(name: str, gen: int, node: str, **meta) -> dict:
        return {"metadata": {"name": name, "labels": {JOB_LABEL: name[0], GEN_LABEL: str(gen)}, **meta}, "spec": {"nodeName": node}, "status": {"phase": "Running"}}

    lives = PodLives()
    for p in (pod("a-g2-0", 2, "proc-0"), pod("b-g1-0", 1, "proc-0"), pod("c-g3-0", 3, "proc-0"), pod("d-g1-0", 1, "proc-1"), pod("e-g1-0", 1, "proc-0")):
        lives.event("ADDED", p, 0.0)
    lives.event("MODIFIED", pod("e-g1-0", 1, "proc-0", deletionTimestamp="t"), 5.0)  # before the node was lost
    lives.event("MODIFIED", pod("a-g2-0", 2, "proc-0", deletionTimestamp="t"), 12.0)  # evicted
    lives.event("MODIFIED", {**pod("a-g2-0", 2, "proc-0", deletionTimestamp="t"), "status": {"phase": "Succeeded"}}, 13.0)
    lives.event("MODIFIED", {**pod("b-g1-0", 1, "proc-0"), "status": {"phase": "Succeeded"}}, 14.0)  # finished its training
    lives.event("DELETED", pod("c-g3-0", 3, "proc-0"), 15.0)  # force-deleted
    lives.event("DELETED", pod("d-g1-0", 1, "proc-1"), 16.0)  # another node
    assert lives.ended_on("proc-0", 10.0, 20.0) == [("a", 2), ("c", 3)]
    assert lives.ended_on("proc-0", 14.5, 20.0) == [("c", 3)]
    assert lives.generations == {("a", 2), ("b", 1), ("c", 3), ("d", 1), ("e", 1)}


@pytest.mark.cluster
@pytest.mark.slow
def test_a_seeded_cluster_run_keeps_every_invariant(capsys):
    workdir = Path(tempfile.mkdtemp(prefix="chaos-cluster-test-"))
    try:
        code = chaos_cluster.main(["--seed", "3", "--faults", "4", "--jobs", "2", "--steps", "1200", "--kinds", KINDS,
                                   "--workdir", str(workdir)])
        out = capsys.readouterr().out
        assert code == 0, out
        summary = json.loads((workdir / "summary.json").read_text())
        assert {k: (c["injected"], c["struck"], c["survived"]) for k, c in summary["faults"].items()} == \
            {k: (1, 1, 1) for k in KINDS.split(",")}, out
        assert all(c == {"kept": 1, "broken": 0} for c in summary["invariants"].values()) and len(summary["invariants"]) == 7, out
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
