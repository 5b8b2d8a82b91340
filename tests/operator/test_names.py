"""The names of a job's children: DNS labels for every generation the job can reach.

A pod's name is its hostname (a DNS label, at most 63 characters) and a PodGroup's name is
a label value; the generation grows with every restart, resize, suspend and straggler
replacement, so the names must fit whatever it is. REVIEW-operator finding 15.
"""

from __future__ import annotations

import re

import pytest

from shardwright.operator.backends import pods, raypods

DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
GENERATIONS = (1, 9, 10, 999, 10**6, 2**31 - 1, 10**18)
GROUPS = ("worker", "w", "a" * 40)  # a group name is a DNS label of at most 40 characters


def owner(name: str) -> pods.Owner:
    return pods.Owner(name=name, namespace="ns", uid="u")


def children(job: pods.Owner, generation: int, group: str) -> list[str]:
    return [pods.pod_name(job, generation, group, 0), pods.pod_name(job, generation, group, 12345),
            pods.pod_group_name(job, generation), raypods.head_name(job, generation)]


@pytest.mark.parametrize("length", [1, 20, 40, 45, 56, 60, 63])
def test_every_child_name_is_a_dns_label_for_every_generation(length):
    job = owner(("job-name-" * 8)[:length - 1] + "z")
    for generation in GENERATIONS:
        for group in GROUPS:
            for name in children(job, generation, group):
                assert len(name) <= 63 and DNS_LABEL.match(name), (len(job.name), name)


def test_names_that_fit_are_unchanged():
    """Pods made before the fitting keep their names across an operator upgrade."""
    job = owner("tiny-train")
    assert pods.pod_name(job, 3, "worker", 1) == "tiny-train-g3-worker-1"
    assert pods.pod_group_name(job, 3) == "tiny-train-g3"
    assert raypods.head_name(job, 3) == "tiny-train-g3-head"


def test_a_long_job_name_is_cut_and_hashed_keeping_what_tells_pods_apart():
    job = owner("llama-3-8b-instruct-finetune-on-the-support-tickets-of-2026q")
    name = pods.pod_name(job, 12, "worker", 3)
    assert len(name) == 63 and name.startswith("llama-3-8b-instruct-finetune-on-the-") and name.endswith("-g12-worker-3")
    assert name == pods.pod_name(owner(job.name), 12, "worker", 3)  # deterministic: creates are idempotent by name


def test_distinct_children_get_distinct_names():
    """Jobs sharing a long prefix, and the pods of one job, never share a name."""
    named = {}
    for job in (owner("x" * 59 + "a"), owner("x" * 59 + "b")):
        for generation in (1, 2, 10**9):
            named[job.name, generation, "group"] = pods.pod_group_name(job, generation)
            named[job.name, generation, "head"] = raypods.head_name(job, generation)
            for group in GROUPS:
                for replica in (0, 1, 12345):
                    named[job.name, generation, group, replica] = pods.pod_name(job, generation, group, replica)
    assert len(set(named.values())) == len(named)
