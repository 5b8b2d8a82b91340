"""The local control plane behaves as Kubernetes does where KMock could not: versions,
RBAC, admission (PodSecurity, schema), uids and garbage collection, our CRD served."""

from __future__ import annotations

import json

import pytest

from tests.support.cluster import apply, get_json, wait_for

pytestmark = pytest.mark.cluster


def test_version_is_the_pinned_release(kube):
    version = json.loads(kube.kubectl("version", "-o", "json").stdout)
    assert version["serverVersion"]["gitVersion"] == "v1.37.2"
    assert version["clientVersion"]["gitVersion"] == "v1.37.2"


def test_rbac_denies_a_service_account_without_a_role(kube, namespace):
    kube.kubectl("-n", namespace, "create", "serviceaccount", "nobody")
    out = kube.kubectl("auth", "can-i", "list", "pods", "-n", namespace, f"--as=system:serviceaccount:{namespace}:nobody", check=False)
    assert out.stdout.strip() == "no"
    kube.kubectl("-n", namespace, "create", "role", "reader", "--verb=list", "--resource=pods")
    kube.kubectl("-n", namespace, "create", "rolebinding", "reader", "--role=reader", f"--serviceaccount={namespace}:nobody")
    assert kube.kubectl("auth", "can-i", "list", "pods", "-n", namespace, f"--as=system:serviceaccount:{namespace}:nobody").stdout.strip() == "yes"


def test_pod_security_admission_rejects_a_privileged_pod(kube, namespace):
    kube.kubectl("label", "namespace", namespace, "pod-security.kubernetes.io/enforce=restricted")
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "namespace": namespace},
           "spec": {"containers": [{"name": "c", "image": "x", "securityContext": {"privileged": True}}]}}
    out = kube.kubectl("apply", "-f", "-", input=json.dumps(pod), check=False)
    assert out.returncode != 0 and 'violates PodSecurity "restricted:latest"' in out.stderr


def test_garbage_collector_deletes_children_by_owner_uid(kube, namespace):
    owner = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "owner", "namespace": namespace}}
    apply(kube, owner)
    uid = get_json(kube, "-n", namespace, "get", "configmap", "owner")["metadata"]["uid"]
    assert uid  # the API server assigns uids (KMock did not)
    child = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {
        "name": "child", "namespace": namespace,
        "ownerReferences": [{"apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": uid, "controller": True}]}}
    apply(kube, child)
    kube.kubectl("-n", namespace, "delete", "configmap", "owner")
    wait_for(lambda: kube.kubectl("-n", namespace, "get", "configmap", "child", check=False).returncode != 0, 60, "child collected")


def test_trainingjob_crd_is_served_with_its_schema_and_columns(kube, namespace):
    crd = get_json(kube, "get", "crd", "trainingjobs.shardwright.io")
    assert {"type": "Established", "status": "True"}.items() <= next(
        c for c in crd["status"]["conditions"] if c["type"] == "Established").items()
    bad = {"apiVersion": "shardwright.io/v1alpha1", "kind": "TrainingJob", "metadata": {"name": "bad", "namespace": namespace},
           "spec": {"workers": "not-a-list"}}
    out = kube.kubectl("apply", "-f", "-", input=json.dumps(bad), check=False)
    assert out.returncode != 0 and "spec.workers" in out.stderr
    kube.kubectl("-n", namespace, "apply", "-f", str(kube.settings.crds[0].parents[1] / "examples" / "tiny-train.yaml"))
    header = kube.kubectl("-n", namespace, "get", "tj").stdout.splitlines()[0].split()
    assert header == ["NAME", "PHASE", "READY", "WORLD", "STEP", "RESTARTS", "AGE"]
