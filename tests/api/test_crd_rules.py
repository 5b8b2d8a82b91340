"""The CRDs' CEL rules on the real API server: ``kubectl apply`` gets the message without
the operator's webhook. Names (DNS-1035), fields frozen unless the job is suspended, and
the resource names a container may ask for."""

from __future__ import annotations

import json

import pytest

from tests.support.cluster import apply, wait_for
from tests.support.manifests import REPO, edited, example

pytestmark = pytest.mark.cluster


def refusal(kube, namespace: str, doc: dict) -> str:
    """The API server's message for ``doc`` (applied in ``namespace``); fails when it is accepted."""
    done = kube.kubectl("-n", namespace, "apply", "-f", "-", input=json.dumps(doc), check=False)
    assert done.returncode != 0, f"accepted: {json.dumps(doc)[:300]}"
    return done.stderr


def test_the_job_name_is_a_dns_1035_label(kube, namespace):
    told = refusal(kube, namespace, edited({"metadata.name": "7b-run"}))
    assert "metadata.name must be a DNS-1035 label" in told and "starting with a letter" in told, told
    apply(kube, edited({"metadata.name": "b7-run"}), "-n", namespace)


def test_a_job_named_before_the_rule_still_takes_updates(kube, namespace):
    """The name is judged at create only: a "7b-run" made under an older CRD (the rule taken
    out here, then put back) is still suspended, and its status still written."""
    crd = "crd/trainingjobs.shardwright.io"
    kube.kubectl("patch", crd, "--type=json", "-p", json.dumps([{"op": "remove", "path": "/spec/versions/0/schema/openAPIV3Schema/x-kubernetes-validations"}]))
    try:
        wait_for(lambda: kube.kubectl("-n", namespace, "create", "-f", "-", input=json.dumps(edited({"metadata.name": "7b-run"})), check=False).returncode == 0,
                 30, "the CRD without the name rule")
    finally:
        kube.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(REPO / "crds" / "trainingjobs.shardwright.io.yaml"))
    wait_for(lambda: "DNS-1035" in kube.kubectl("-n", namespace, "create", "--dry-run=server", "-f", "-",
                                                 input=json.dumps(edited({"metadata.name": "8b-run"})), check=False).stderr, 30, "the name rule back")
    kube.kubectl("-n", namespace, "patch", "tj", "7b-run", "--type=merge", "-p", '{"spec": {"suspend": true}}')
    kube.kubectl("-n", namespace, "patch", "tj", "7b-run", "--subresource=status", "--type=merge", "-p", '{"status": {"phase": "Suspended"}}')


@pytest.mark.parametrize("edits, field", [
    ({"spec.model.layers": 3}, "spec.model"),
    ({"spec.training.steps": 999}, "spec.training"),
    ({"spec.data.seqLen": 32}, "spec.data"),
    ({"spec.runtime": "ray"}, "spec.runtime"),
    ({"spec.checkpoint.intervalSteps": 7}, "spec.checkpoint"),
    ({"spec.parallelism.sequence.degree": 2}, "spec.parallelism.sequence"),
    ({"spec.workers[0].resources": {"requests": {"cpu": "2"}}}, "spec.workers"),
    ({"spec.workers[0].image": "other:1"}, "spec.workers"),
    ({"spec.workers[0].template": {"spec": {"tolerations": [{"key": "gpu", "operator": "Exists"}]}}}, "spec.workers"),
    ({"spec.workers[0].name": "gpus"}, "spec.workers"),
    ({"spec.workers": [{"name": "worker", "replicas": 2}, {"name": "more", "replicas": 1}]}, "spec.workers"),
], ids=["model", "training", "data", "runtime", "checkpoint", "sequence", "group-resources", "group-image", "group-template",
     "group-name", "group-added"])
def test_a_running_job_keeps_what_its_generation_started_with(kube, namespace, edits, field):
    """Refused while the stored job is not suspended, naming the field and the way out;
    accepted once it is."""
    apply(kube, example(), "-n", namespace)
    told = refusal(kube, namespace, edited(edits))
    assert f"{field}: Invalid value" in told and "while the job is not suspended" in told, told
    assert "set spec.suspend: true first" in told, told
    apply(kube, edited({"spec.suspend": True}), "-n", namespace)
    apply(kube, edited({**edits, "spec.suspend": False}), "-n", namespace)  # the edit and the resume together


def test_a_running_job_resizes_and_changes_its_policies(kube, namespace):
    """Replicas (an elastic resize), the elastic bounds and the policies change live."""
    apply(kube, example(), "-n", namespace)
    apply(kube, edited({"spec.workers[0].replicas": 4, "spec.elastic": {"minReplicas": 1, "maxReplicas": 4},
                        "spec.failurePolicy.maxRestarts": 9, "spec.stragglerPolicy.action": "rebalance"}), "-n", namespace)


@pytest.mark.parametrize("name", ["gpu", "nvidia.com/", "kubernetes.io/gpu", "Vendor.com/gpu", "requests.x/y"],
                         ids=["no-domain", "no-name", "reserved-domain", "uppercase-domain", "quota-prefix"])  # an id "gpu" would mark it a GPU test
def test_an_unknown_resource_name_is_refused(kube, namespace, name):
    told = refusal(kube, namespace, edited({"spec.workers[0].resources.requests": {name: 1}}))
    assert "spec.workers[0].resources.requests" in told and "unknown resource name" in told, told


@pytest.mark.parametrize("quantity", ["abc", "1.5.5", "-1", "1Kb", "", " 1", -1, 1.5])
def test_a_malformed_quantity_is_refused(kube, namespace, quantity):
    told = refusal(kube, namespace, edited({"spec.workers[0].resources.requests": {"cpu": quantity}}))
    assert "spec.workers[0].resources.requests.cpu" in told, told


def test_the_rules_cost_fits_the_api_servers_budget(kube):
    """The CRDs were installed with their rules (a rule too costly makes the API server refuse the CRD)."""
    for plural in ("trainingjobs", "servingpools"):
        crd = json.loads(kube.kubectl("get", "crd", f"{plural}.shardwright.io", "-o", "json").stdout)
        (version,) = crd["spec"]["versions"]
        assert version["schema"]["openAPIV3Schema"]["x-kubernetes-validations"], plural

