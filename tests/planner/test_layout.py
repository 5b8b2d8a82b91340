"""Placement and mesh groups: pods go first fit onto whole nodes, and every group holds
the ranks that agree on every coordinate but its own axes."""

from __future__ import annotations

import copy
from collections import Counter

import pytest

from shardwright.operator.api import parse
from shardwright.operator.planner import ParallelDims, layout
from shardwright.operator.planner.dims import AXES

from .clusters import JOB, cluster, node


@pytest.mark.parametrize("dims", [ParallelDims(3, sequence=2, tensor=2, pipeline=2), ParallelDims(4, tensor=4), ParallelDims(1, sequence=4, pipeline=3), ParallelDims(5)],
                         ids=lambda d: d.layout)
def test_mesh_groups_hold_ranks_equal_in_every_other_coordinate(dims):
    cases = [((axis,), dims.groups(axis)) for axis in AXES] + [(("sequence", "data"), dims.gradient_groups())]
    for axes, groups in cases:
        assert sorted(r for g in groups for r in g) == list(range(dims.world_size))  # every rank once
        size = 1
        for axis in axes:
            size *= getattr(dims, axis)
        for group in groups:
            assert len(group) == size and group == sorted(group)
            others = {tuple(c for a, c in dims.coords(r).items() if a not in axes) for r in group}
            assert len(others) == 1, (axes, group)
        assert [g[0] for g in groups] == sorted(g[0] for g in groups)  # listed by first rank


def test_pods_go_first_fit_in_node_order_and_each_group_starts_over():
    # Speed order: H100 (3 GPUs), A100 (8), L40S (5). Pods of 2 leave a GPU free on the
    # H100 and the L40S node; the second group's 1-GPU pods take exactly those.
    inv = cluster(node("h", "H100", gpus=3), node("a", "A100", gpus=8), node("l", "L40S", gpus=5))
    doc = copy.deepcopy(JOB)
    doc["spec"]["workers"] = [{"name": "pairs", "replicas": 7, "ranksPerReplica": 2}, {"name": "singles", "replicas": 2}]
    slots = layout.place_pods(parse(doc).spec, inv)
    pods = {(s.group, s.replica): [] for s in slots}
    for s in slots:
        pods[(s.group, s.replica)].append(s)
    assert all(len({s.node.name for s in pod}) == 1 and [s.local_rank for s in pod] == list(range(len(pod))) for pod in pods.values())
    per_node = {group: Counter(pod[0].node.name for (g, _), pod in pods.items() if g == group) for group in ("pairs", "singles")}
    assert per_node == {"pairs": {"h": 1, "a": 4, "l": 2}, "singles": {"h": 1, "l": 1}}
    assert [pod[0].node.name for (g, _), pod in sorted(pods.items()) if g == "pairs"] == ["h", "a", "a", "a", "a", "l", "l"]
    assert len(slots) == 16  # every GPU used
