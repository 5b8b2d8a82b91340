"""The checked-in CRD is what the models generate, is structural, and agrees with `validate`."""

from __future__ import annotations

from typing import Any, Iterator

import pytest
import yaml

from shardwright.operator.api import crd
from tests.support.manifests import REPO, example
from tests.support.schema_check import check

from .cases import CASES, Bad

CRD_FILE = REPO / "crds" / "trainingjobs.shardwright.io.yaml"


@pytest.fixture(scope="module")
def definition() -> dict[str, Any]:
    return yaml.safe_load(CRD_FILE.read_text())


@pytest.fixture(scope="module")
def schema(definition) -> dict[str, Any]:
    (version,) = definition["spec"]["versions"]
    return version["schema"]["openAPIV3Schema"]


def test_checked_in_crds_match_the_models():
    drift = crd.drifted(REPO / "crds")
    assert drift == [], f"{drift} out of date with operator/api: run `shardwright crds` and commit crds/"


def test_drift_is_detected(tmp_path):
    """The drift check is not vacuous: an edited or missing file is reported."""
    crd.write_all(tmp_path)
    assert crd.drifted(tmp_path) == []
    path = tmp_path / CRD_FILE.name
    path.write_text(path.read_text().replace("minimum: 1", "minimum: 2", 1))
    assert crd.drifted(tmp_path) == [CRD_FILE.name]
    path.unlink()
    assert crd.drifted(tmp_path) == [CRD_FILE.name]


def _nodes(node: dict[str, Any], path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    yield path, node
    for name, sub in node.get("properties", {}).items():
        yield from _nodes(sub, f"{path}.{name}")
    if isinstance(node.get("items"), dict):
        yield from _nodes(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        yield from _nodes(node["additionalProperties"], f"{path}{{}}")
    for i, sub in enumerate(node.get("anyOf", [])):
        yield from _nodes(sub, f"{path}|{i}")


def test_schema_is_structural(schema):
    nodes = list(_nodes(schema))
    assert len(nodes) > 100  # the walk really reached the leaves
    for path, node in nodes:
        assert "$ref" not in node and "$defs" not in node, path
        assert node.get("additionalProperties") is not False, path
        int_or_string = node.get("x-kubernetes-int-or-string") is True
        under_anyof = "|" in path
        assert "type" in node or int_or_string, f"{path} has no type"
        assert "anyOf" not in node or int_or_string, f"{path}: anyOf outside int-or-string"
        assert not node.get("nullable") or "type" in node, f"{path}: nullable without a type"
        assert not (under_anyof and set(node) - {"type"}), f"{path}: anyOf branch does more than type"


def test_schema_file_has_no_yaml_aliases():
    """Anchors (&id001) confuse reviewers and some GitOps diff tools; every node is spelled out."""
    assert "&id" not in CRD_FILE.read_text()


def test_names_group_version_and_status_and_scale_subresources(definition):
    spec = definition["spec"]
    assert definition["metadata"]["name"] == "trainingjobs.shardwright.io"
    assert spec["group"] == "shardwright.io"
    assert spec["names"]["shortNames"] == ["tj"]
    assert spec["names"]["kind"] == "TrainingJob" and spec["scope"] == "Namespaced"
    (version,) = spec["versions"]
    assert version["name"] == "v1alpha1" and version["served"] and version["storage"]
    assert version["subresources"] == {"status": {}, "scale": {
        "specReplicasPath": ".spec.elastic.replicas", "statusReplicasPath": ".status.replicas", "labelSelectorPath": ".status.selector"}}


def test_printer_columns_point_at_real_status_fields(definition, schema):
    (version,) = definition["spec"]["versions"]
    columns = {c["name"]: c for c in version["additionalPrinterColumns"]}
    assert [n for n, c in columns.items() if not c.get("priority")] == [
        "Phase", "Ready", "World", "Step", "Restarts", "Age",
    ]
    for name, column in columns.items():
        path = column["jsonPath"]
        if path == ".metadata.creationTimestamp":
            continue
        node = schema
        for part in path.strip(".").split("."):
            assert part in node.get("properties", {}), f"{name}: {path} is not in the schema"
            node = node["properties"][part]
        expected = {"integer": "integer", "number": "number", "string": "string"}[node["type"]]
        assert column["type"] == expected, f"{name}: column type {column['type']} vs {node['type']}"


def test_the_example_conforms_to_the_crd(schema):
    assert check(schema, example()) == []


def test_the_checker_is_not_vacuous(schema):
    """The checker itself sees bounds, exclusive bounds, nullability and int-or-string."""
    spec = schema["properties"]["spec"]
    lr = spec["properties"]["training"]["properties"]["lr"]
    assert check(lr, 0) and check(lr, 0.0) and not check(lr, 1e-9) and check(lr, 11)
    assert check(spec["properties"]["elastic"], None) == []
    cpu = spec["properties"]["workers"]["items"]["properties"]["resources"]["properties"]["requests"]
    assert check(cpu, {"cpu": 2, "memory": "8Gi"}) == [] and check(cpu, {"cpu": 1.5})


SCHEMA_CASES = [c for c in CASES if c.schema]


@pytest.mark.parametrize("case", SCHEMA_CASES, ids=lambda c: c.id)
def test_schema_level_mistakes_are_rejected_by_the_crd_too(case: Bad, schema):
    """The API server and our validator agree, and on the same field."""
    problems = check(schema, case.doc)
    assert problems, f"the CRD schema accepts {case.edits}"
    assert case.path in [p for p, _ in problems]


def test_there_are_enough_schema_level_cases():
    assert len(SCHEMA_CASES) >= 15
