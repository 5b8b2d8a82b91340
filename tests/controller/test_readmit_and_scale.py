"""``spec.readmit`` applied to the status (once per request, the spec never edited) and
``spec.elastic.replicas`` (what ``kubectl scale`` sets) turned into replicas per group."""

from __future__ import annotations

import pytest

from shardwright.operator.api import TrainingJobStatus
from shardwright.operator.api.validation import validate
from shardwright.operator.controller import readmit
from shardwright.operator.planner import plan_for_capacity
from tests.support.manifests import edited

from .driver import spec

AVOIDING = TrainingJobStatus(avoided_nodes=["node-a", "node-b"])


def told(events) -> list[tuple[str, str]]:
    return [(e.reason, e.message) for e in events]


def test_a_readmit_takes_the_nodes_back_once_and_is_acknowledged():
    job = spec(readmit={"nodes": ["node-b", "node-x"]})
    status, events = readmit(job, AVOIDING)
    assert status.avoided_nodes == ["node-a"]
    assert status.readmitted.nodes == ["node-b", "node-x"] and status.readmitted.token == ""
    assert told(events) == [
        ("NodeReadmitted", "Later generations may run on node-b again (spec.readmit)"),
        ("ReadmitIgnored", "Not avoided by this job, nothing to readmit: node-x (status.avoidedNodes: node-a, node-b)"),
    ]
    assert job.readmit.nodes == ["node-b", "node-x"]  # the spec is as the user wrote it
    # The same request again (a GitOps tool re-applying git): nothing new.
    assert readmit(job, status) == (status, [])


def test_a_node_avoided_again_after_a_readmit_stays_avoided_until_the_token_changes():
    job = spec(readmit={"nodes": ["node-b"], "token": "1"})
    status, _ = readmit(job, AVOIDING)
    again = status.model_copy(update={"avoided_nodes": ["node-a", "node-b"]})  # a straggler there once more
    assert readmit(job, again) == (again, [])
    bumped, events = readmit(spec(readmit={"nodes": ["node-b"], "token": "2"}), again)
    assert bumped.avoided_nodes == ["node-a"] and bumped.readmitted.token == "2"
    assert [e.reason for e in events] == ["NodeReadmitted"]


def test_removing_the_request_removes_its_acknowledgment_only():
    status, _ = readmit(spec(readmit={"nodes": ["node-b"]}), AVOIDING)
    gone, events = readmit(spec(), status)
    assert gone.readmitted is None and gone.avoided_nodes == ["node-a"] and not events
    assert readmit(spec(), gone) == (gone, [])


def test_a_readmit_names_nodes_by_their_kubernetes_names():
    (bad,) = validate(edited({"spec.readmit": {"nodes": ["Node_B"]}}))[1]
    assert (bad.path, bad.message) == ("spec.readmit.nodes[0]", "must be a node name: lowercase letters, digits, '-' and '.' (got 'Node_B')")
    (empty,) = validate(edited({"spec.readmit": {"nodes": []}}))[1]
    assert (empty.path, empty.message) == ("spec.readmit.nodes", "must have at least 1 item(s)")


TWO_GROUPS = [{"name": "a", "replicas": 2}, {"name": "b", "replicas": 2}]


@pytest.mark.parametrize("target,wanted", [(None, {"a": 2, "b": 2}), (1, {"a": 1, "b": 0}), (3, {"a": 2, "b": 1}), (6, {"a": 2, "b": 4})])
def test_elastic_replicas_resize_the_last_group_first(target, wanted):
    job = spec(workers=TWO_GROUPS, elastic={"minReplicas": 1, "maxReplicas": 8, "replicas": target})
    assert job.replicas_wanted() == wanted
    assert plan_for_capacity(job, None).world_size == sum(wanted.values())


def test_elastic_replicas_outside_the_bounds_are_refused_naming_the_field():
    (bad,) = validate(edited({"spec.workers": TWO_GROUPS, "spec.elastic": {"minReplicas": 2, "maxReplicas": 6, "replicas": 7}}))[1]
    assert bad.path == "spec.elastic.replicas" and bad.message == "must be within [minReplicas, maxReplicas] = [2, 6]; got 7"
