"""The ServingPool API: its generated CRD (checked in, structural, /scale) and its validation."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import yaml

from shardwright.operator.api import crd
from shardwright.operator.api.servingpool import ServingPool, validate_pool
from shardwright.workers.serve.config import EngineConfig
from tests.api import test_crds as trainingjob_crd
from tests.support.manifests import REPO
from tests.support.schema_check import check

NAME = "servingpools.shardwright.io.yaml"
POOL = {
    "apiVersion": "shardwright.io/v1alpha1",
    "kind": "ServingPool",
    "metadata": {"name": "tiny-serve"},
    "spec": {
        "model": {"preset": "small", "seed": 3},
        "engine": {"maxBatchTokens": 128, "blockSize": 16, "kvBlocks": 64, "maxModelLen": 512},
        "replicas": 2,
        "roles": [{"name": "unified", "minReplicas": 1, "maxReplicas": 4, "resources": {"requests": {"cpu": 1, "memory": "2Gi"}}}],
        "router": {"policy": "prefix-aware", "retries": 2},
        "autoscaling": {"signal": "queue-depth", "target": 4},
        "slo": {"ttftP99Seconds": 0.5, "tpotP99Seconds": 0.05},
        "rollout": {"maxSurge": 1, "maxUnavailable": 0, "drainTimeoutSeconds": 20},
    },
}


@pytest.fixture(scope="module")
def definition() -> dict[str, Any]:
    return yaml.safe_load((REPO / "crds" / NAME).read_text())


@pytest.fixture(scope="module")
def schema(definition) -> dict[str, Any]:
    (version,) = definition["spec"]["versions"]
    return version["schema"]["openAPIV3Schema"]


def _edit(path: str, value: Any) -> dict[str, Any]:
    doc = copy.deepcopy(POOL)
    *parents, last = path.split(".")
    node = doc
    for part in parents:
        node = node[int(part)] if part.isdigit() else node.setdefault(part, {})
    if value is _DELETE:
        del node[last]
    else:
        node[last] = value
    return doc


_DELETE = object()


def test_checked_in_crd_and_chart_copy_match_the_model():
    assert (REPO / "crds" / NAME).read_text() == crd.render(ServingPool), "run `shardwright crds` and commit crds/"
    assert (REPO / "helm" / "shardwright" / "crd-files" / NAME).read_text() == crd.render(ServingPool), "run `shardwright crds`"


def test_names_and_the_scale_subresource(definition, schema):
    spec = definition["spec"]
    assert definition["metadata"]["name"] == "servingpools.shardwright.io"
    assert spec["names"]["kind"] == "ServingPool" and spec["names"]["shortNames"] == ["sp"]
    (version,) = spec["versions"]
    scale = version["subresources"]["scale"]
    assert version["subresources"]["status"] == {}
    # Every path the scale subresource names exists in the schema with the right type.
    for key, kind in (("specReplicasPath", "integer"), ("statusReplicasPath", "integer"), ("labelSelectorPath", "string")):
        node = schema
        for part in scale[key].strip(".").split("."):
            node = node["properties"][part]
        assert node["type"] == kind, key


def test_printer_columns_point_at_real_fields(definition, schema):
    (version,) = definition["spec"]["versions"]
    for column in version["additionalPrinterColumns"]:
        if column["jsonPath"] == ".metadata.creationTimestamp":
            continue
        node = schema
        for part in column["jsonPath"].strip(".").split("."):
            assert part in node.get("properties", {}), column
            node = node["properties"][part]
        assert node["type"] == column["type"], column


def test_schema_is_structural(schema):
    nodes = list(trainingjob_crd._nodes(schema))
    assert len(nodes) > 60
    for path, node in nodes:
        assert "$ref" not in node and node.get("additionalProperties") is not False, path
        assert "type" in node or node.get("x-kubernetes-int-or-string") is True, f"{path} has no type"


def test_a_good_pool_validates_and_conforms_to_the_crd(schema):
    pool, problems = validate_pool(POOL)
    assert problems == [] and pool is not None
    assert check(schema, POOL) == []
    assert pool.spec.engine.resolve() == EngineConfig(block_size=16, num_blocks=64, max_num_batched_tokens=128, max_model_len=512)
    assert validate_pool({**POOL, "spec": {}})[1] == []  # every field has a default


SCHEMA_CASES = [
    ("spec.replicas", -1, "must be >= 0 (got -1)"),
    ("spec.router.policy", "random", "must be one of: prefix-aware, least-load, round-robin (got 'random')"),
    ("spec.router.retries", 11, "must be <= 10 (got 11)"),
    ("spec.engine.kind", "tgi", "must be one of: builtin, vllm, sglang (got 'tgi')"),
    ("spec.engine.blockSize", 0, "must be >= 1 (got 0)"),
    ("spec.autoscaling.target", 0, "must be > 0.0 (got 0)"),
    ("spec.autoscaling.signal", "cpu", "must be one of: queue-depth, ttft, tokens-per-second (got 'cpu')"),
    ("spec.roles.0.name", "leader", "must be one of: unified, prefill, decode (got 'leader')"),
    ("spec.slo.ttftP99Seconds", -0.5, "must be > 0.0 (got -0.5)"),
    ("spec.replicas", "2", "must be an integer (got '2')"),
]


@pytest.mark.parametrize("path,value,message", SCHEMA_CASES, ids=[c[0] + "=" + str(c[1]) for c in SCHEMA_CASES])
def test_schema_mistakes_name_the_field_here_and_in_the_crd(schema, path, value, message):
    doc = _edit(path, value)
    _, problems = validate_pool(doc)
    field = path.replace(".0.", "[0].")
    assert [(p.path, p.message) for p in problems] == [(field, message)]
    assert field in [p for p, _ in check(schema, doc)], "the API server would accept it"


def test_an_unknown_field_lists_the_allowed_ones():
    _, problems = validate_pool(_edit("spec.router.sticky", True))
    assert [str(p) for p in problems] == ["spec.router.sticky: unknown field; allowed here: migrateOnFailure, policy, requestTimeoutSeconds, retries"]


RULE_CASES = [
    ("spec.engine.kind", "vllm", "spec.engine.kind", "vllm is not supported yet; allowed: builtin"),
    ("spec.model.attention", "gated-delta", "spec.model.attention", "the builtin engine serves softmax attention only"),
    ("spec.model.kvHeads", 3, "spec.model.kvHeads", "must divide heads (8); got 3"),
    ("spec.engine.kvBlocks", 8, "spec.engine.kvBlocks", "kvBlocks x blockSize (8 x 16) must hold maxModelLen (512) tokens; raise kvBlocks to at least 32"),
    ("spec.engine.chunkedPrefill", False, "spec.engine.maxBatchTokens", "without chunkedPrefill a whole prompt is prefilled in one iteration: must be >= maxModelLen (512); got 128"),
    ("spec.roles.0.name", "prefill", "spec.roles[0].name", "prefill roles (disaggregated prefill/decode) are not supported yet; allowed: unified"),
    ("spec.roles.0.replicas", 3, "spec.roles[0].replicas", "a unified pool's size is spec.replicas"),
    ("spec.roles.0.minReplicas", 5, "spec.roles[0].minReplicas", "must be <= maxReplicas (4); got 5"),
    ("spec.replicas", 6, "spec.replicas", "must be within roles[0] minReplicas..maxReplicas (1..4) when autoscaling; got 6"),
    ("spec.roles.0.minReplicas", 0, "spec.roles[0].minReplicas", "0 needs autoscaling.idleToZero: true"),
    ("spec.rollout.maxSurge", 0, "spec.rollout.maxSurge", "maxSurge and maxUnavailable cannot both be 0"),
    ("spec.roles.0.parallelism", {"tensor": 2}, "spec.roles[0].parallelism.tensor", "tensor parallelism is not supported by the builtin engine yet; allowed: 1"),
]


@pytest.mark.parametrize("path,value,field,message", RULE_CASES, ids=[f"{c[0]}={c[1]}" for c in RULE_CASES])
def test_cross_field_rules_name_the_field_and_the_fix(path, value, field, message):
    pool, problems = validate_pool(_edit(path, value))
    assert pool is None
    assert [p.path for p in problems] == [field]
    assert message in problems[0].message


def test_scale_to_zero_needs_idle_to_zero():
    _, problems = validate_pool(_edit("spec.autoscaling", _DELETE))
    assert problems == []
    doc = _edit("spec.replicas", 0)
    doc["spec"]["autoscaling"] = None
    assert [str(p) for p in validate_pool(doc)[1]] == ["spec.replicas: 0 serves nothing; use 1 or more, or autoscaling.idleToZero: true"]
    doc["spec"]["autoscaling"] = {"target": 4, "idleToZero": True}
    doc["spec"]["roles"][0]["minReplicas"] = 0
    assert validate_pool(doc)[1] == []
