"""``lenient.read``: what the operator reads back from the server. Unknown fields at any depth
are dropped and named; known ones are validated as strictly as ``validate`` does."""

from __future__ import annotations

import copy

from shardwright.operator.api import lenient, validate
from tests.support.manifests import edited

NEWER = {
    "spec.futureField": "x",
    "spec.workers[0].futureField": {"a": 1},
    "spec.failurePolicy.backoff.futureField": 2,
    "status": {"phase": "Running", "futureField": True, "ranks": [{"rank": 0, "state": "Running", "futureField": "y"}],
               "conditions": [{"type": "Running", "status": "True", "reason": "RanksRunning", "lastTransitionTime": "2026-01-01T00:00:00Z", "futureField": 1}]},
    "metadata.managedFields": [{"manager": "kubectl"}],  # metadata keeps what it does not read
    "spec.workers[0].template": {"spec": {"futurePodField": 1}},  # a PodSpec is kept as written
}


def test_unknown_fields_at_any_depth_are_dropped_and_named():
    doc = edited(NEWER)
    before = copy.deepcopy(doc)
    job, problems, dropped = lenient.read(doc)
    assert problems == [] and job is not None
    assert sorted(dropped) == ["spec.failurePolicy.backoff.futureField", "spec.futureField", "spec.workers[0].futureField",
                               "status.conditions[0].futureField", "status.futureField", "status.ranks[0].futureField"]
    assert job.status.ranks[0].rank == 0 and job.status.conditions[0].reason == "RanksRunning"
    assert job.metadata.model_extra["managedFields"] == [{"manager": "kubectl"}]
    assert job.spec.workers[0].template.spec == {"futurePodField": 1}
    assert doc == before  # the watched body is not changed
    assert validate(doc)[0] is None  # what a user sends stays strict


def test_known_fields_are_still_validated():
    job, problems, dropped = lenient.read(edited({**NEWER, "spec.workers[0].replicas": 0, "spec.parallelism.sequence.degree": 3}))
    assert job is None and "spec.futureField" in dropped
    assert [str(p) for p in problems] == ["spec.workers[0].replicas: must be >= 1 (got 0)"]


def test_an_object_of_no_known_kind_gets_validate_s_answer():
    doc = edited({"kind": "Other"})
    assert lenient.read(doc) == (*validate(doc), [])
