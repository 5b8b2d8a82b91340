"""status.conditions of both CRDs is a map list keyed by ``type``, as Kubernetes' own
condition lists are: two writers applying different condition types server-side keep both,
and each owns only its own. With an atomic list (the CRDs before this) the second writer's
apply is refused as a conflict over the whole list, or, forced, replaces the first's items."""

from __future__ import annotations

import json

import pytest
import yaml

from shardwright.operator.api import crd
from tests.support.cluster import apply
from tests.support.manifests import REPO, example

MAP_LIST = {"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]}


@pytest.mark.parametrize("kind", crd.KINDS, ids=[k.KIND for k in crd.KINDS])
def test_the_published_crd_has_conditions_as_a_map_list_keyed_by_type(kind):
    (version,) = yaml.safe_load((REPO / "crds" / f"{kind.PLURAL}.{crd.GROUP}.yaml").read_text())["spec"]["versions"]
    conditions = version["schema"]["openAPIV3Schema"]["properties"]["status"]["properties"]["conditions"]
    assert {k: conditions.get(k) for k in MAP_LIST} == MAP_LIST
    assert "type" in conditions["items"]["required"]  # a map key must always be there


def condition(type_: str, reason: str) -> dict:
    return {"type": type_, "status": "True", "reason": reason, "message": "", "lastTransitionTime": "2026-01-01T00:00:00Z"}


@pytest.mark.cluster
def test_two_server_side_writers_of_different_condition_types_keep_both(kube, namespace):
    """The operator writes Running; another controller (a queue, a policy engine) applies
    its own type. Each apply names only its own item; the server merges them by type."""
    job = example()
    apply(kube, job, "-n", namespace)
    name = job["metadata"]["name"]

    def status_apply(manager: str, *conditions: dict) -> None:
        patch = {"apiVersion": job["apiVersion"], "kind": job["kind"], "metadata": {"name": name},
                 "status": {"conditions": list(conditions)}}
        kube.kubectl("-n", namespace, "apply", "--server-side", "--subresource=status", f"--field-manager={manager}",
                     "-f", "-", input=json.dumps(patch))

    status_apply("shardwright-operator", condition("Running", "RanksRunning"))
    status_apply("queue-controller", condition("QueueAdmitted", "Admitted"))
    status_apply("shardwright-operator", condition("Running", "RanksStarting"))  # its own type again: merged, not replaced
    got = json.loads(kube.kubectl("-n", namespace, "get", "tj", name, "-o", "json", "--show-managed-fields").stdout)
    assert {c["type"]: c["reason"] for c in got["status"]["conditions"]} == {"Running": "RanksStarting", "QueueAdmitted": "Admitted"}
    owners = {m["manager"]: json.dumps(m["fieldsV1"]) for m in got["metadata"]["managedFields"] if m.get("subresource") == "status"}
    assert '{\\"type\\":\\"Running\\"}' in owners["shardwright-operator"] and "QueueAdmitted" not in owners["shardwright-operator"]
    assert '{\\"type\\":\\"QueueAdmitted\\"}' in owners["queue-controller"] and "Running" not in owners["queue-controller"]
