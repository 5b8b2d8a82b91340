"""The chart rendered by real Helm (helm-python-sdk): valid Kubernetes objects, CRDs equal to
crds/, examples valid against the CRD, and a dashboard that queries only exported metrics."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

helm = pytest.importorskip("helm_python", reason="helm-python-sdk is not installed (pip install -e .[test])")
kubernetes_validate = pytest.importorskip("kubernetes_validate", reason="kubernetes-validate is not installed")

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "shardwright"
K8S_VERSION = "1.32.0"
#: Kinds kubernetes-validate has no schema for (CRD-defined): checked by shape below instead.
CUSTOM_KINDS = {"ServiceMonitor"}

NON_DEFAULT = {
    "crds": {"install": False},
    "watchNamespaces": ["team-a", "team-b"],
    "leaderElection": {"enabled": False},
    "replicaCount": 1,
    "gangScheduler": "volcano",
    "cordonNodes": True,
    "workerServiceAccount": "trainers",
    "metrics": {"serviceMonitor": {"enabled": True, "labels": {"release": "prom"}}},
    "webhook": {"certSecret": "my-cert", "caBundle": "Q0E=", "failurePolicy": "Ignore"},
    "dashboards": {"enabled": False},
    "image": {"tag": "0.1.1"},
}


def render(values: dict) -> list[dict]:
    chart = helm.Chart.load(str(CHART))
    chart.validate_schema(values)
    out = chart.render(values, name="sw", namespace="shardwright-system")
    return [doc for text in out.values() for doc in yaml.safe_load_all(text) if doc]


@pytest.fixture(scope="module")
def default_objects() -> list[dict]:
    return render({})


def by_kind(objects: list[dict], kind: str) -> list[dict]:
    return [o for o in objects if o["kind"] == kind]


@pytest.mark.parametrize("values", [{}, NON_DEFAULT], ids=["default", "non-default"])
def test_rendered_manifests_pass_kubernetes_validate_strictly(values):
    objects = render(values)
    assert objects
    for obj in objects:
        if obj["kind"] in CUSTOM_KINDS:
            assert obj["spec"]["endpoints"][0]["port"] == "metrics"
            continue
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)


def test_chart_crds_equal_the_generated_crds(default_objects):
    rendered = {c["metadata"]["name"]: c for c in by_kind(default_objects, "CustomResourceDefinition")}
    generated = {}
    for path in sorted((ROOT / "crds").glob("*.yaml")):
        doc = yaml.safe_load(path.read_text())
        generated[doc["metadata"]["name"]] = doc
    assert rendered.keys() == generated.keys()
    for name, crd in rendered.items():
        annotations = crd["metadata"].pop("annotations")
        assert annotations == {"helm.sh/resource-policy": "keep"}
        assert crd == generated[name], f"helm/shardwright/crd-files/{name}.yaml drifted from crds/: run `shardwright crds`"


def test_default_operator_is_locked_down(default_objects):
    deployment = by_kind(default_objects, "Deployment")[0]
    assert deployment["spec"]["strategy"] == {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}
    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["resources"]["limits"] and container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "health"}
    assert "--lease-namespace=shardwright-system" in container["args"]
    rules = by_kind(default_objects, "ClusterRole")[0]["rules"]
    assert all("*" not in r["verbs"] and "*" not in r["resources"] for r in rules)
    pods_rule = next(r for r in rules if r["resources"] == ["pods"])
    assert next(r for r in rules if r["resources"] == ["trainingjobs/finalizers"])["verbs"] == ["update"]  # blockOwnerDeletion
    assert set(pods_rule["verbs"]) == {"get", "list", "watch", "create", "delete"}
    nodes_rule = next(r for r in rules if r["resources"] == ["nodes"])
    assert set(nodes_rule["verbs"]) == {"list", "watch"}  # no cordoning unless asked
    assert not any("namespaces" in r["resources"] for r in rules)  # cluster-wide: Kopf observes none
    assert "--cordon-nodes" not in container["args"]
    assert not any(a.startswith("--worker-service-account") for a in container["args"])
    webhook = by_kind(default_objects, "ValidatingWebhookConfiguration")[0]["webhooks"][0]
    assert webhook["clientConfig"]["service"]["path"] == "/admit" and webhook["rules"][0]["operations"] == ["CREATE", "UPDATE"]
    assert webhook["rules"][0]["resources"] == ["trainingjobs", "servingpools"]  # both kinds judged as `shardwright validate` judges
    dashboard = by_kind(default_objects, "ConfigMap")[0]
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"


def test_the_webhook_certificate_is_never_rendered():
    """The Secret is created empty and the caBundle left out: the operator issues and injects
    them, so two renders (two upgrades, Argo CD syncs) are equal and change neither. The
    operator may write that one Secret and patch that one configuration, nothing else."""
    first, second = render({}), render({})
    for kind in ("Secret", "ValidatingWebhookConfiguration", "Deployment"):
        assert by_kind(first, kind) == by_kind(second, kind)
    secret = by_kind(first, "Secret")[0]
    assert secret["type"] == "Opaque" and "data" not in secret and "stringData" not in secret
    webhook = by_kind(first, "ValidatingWebhookConfiguration")[0]
    assert "caBundle" not in webhook["webhooks"][0]["clientConfig"]
    role = next(r for r in by_kind(first, "Role") if r["metadata"]["name"] == "sw-shardwright-webhook")
    assert role["rules"] == [{"apiGroups": [""], "resources": ["secrets"], "resourceNames": ["sw-shardwright-webhook-cert"], "verbs": ["get", "update"]}]
    rule = next(r for r in by_kind(first, "ClusterRole")[0]["rules"] if r["resources"] == ["validatingwebhookconfigurations"])
    assert rule["resourceNames"] == ["sw-shardwright"] and rule["verbs"] == ["get", "patch"]
    args = by_kind(first, "Deployment")[0]["spec"]["template"]["spec"]["containers"][0]["args"]
    assert {"--webhook-secret=sw-shardwright-webhook-cert", "--webhook-service=sw-shardwright", "--webhook-configuration=sw-shardwright"} <= set(args)


def test_a_brought_certificate_is_only_read():
    """certSecret (cert-manager): the operator reads that Secret and never writes it nor the
    caBundle, which comes from caBundle or cert-manager's cainjector (caInjectFrom)."""
    objects = render({"webhook": {"certSecret": "my-cert", "caInjectFrom": "shardwright-system/sw-webhook"}})
    assert not by_kind(objects, "Secret")
    webhook = by_kind(objects, "ValidatingWebhookConfiguration")[0]
    assert webhook["metadata"]["annotations"] == {"cert-manager.io/inject-ca-from": "shardwright-system/sw-webhook"}
    role = next(r for r in by_kind(objects, "Role") if r["metadata"]["name"] == "sw-shardwright-webhook")
    assert role["rules"][0]["resourceNames"] == ["my-cert"] and role["rules"][0]["verbs"] == ["get"]
    assert not any(r["resources"] == ["validatingwebhookconfigurations"] for r in by_kind(objects, "ClusterRole")[0]["rules"])
    args = by_kind(objects, "Deployment")[0]["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--webhook-secret=my-cert" in args and not any(a.startswith("--webhook-configuration") for a in args)


@pytest.mark.parametrize("values", [{}, NON_DEFAULT], ids=["default", "non-default"])
def test_no_role_reads_a_secret_it_does_not_name(values):
    """The operator reads only its own Secrets, by name (the webhook certificate, the token
    key); a job's token Secret is made, never read back (operator/tokenkey.py)."""
    objects = render(values)
    reads = [(role["metadata"]["name"], rule) for role in by_kind(objects, "Role") + by_kind(objects, "ClusterRole")
             for rule in role["rules"] if {"secrets", "*"} & set(rule["resources"]) and not rule.get("resourceNames")
             and set(rule["verbs"]) - {"create"}]
    assert not reads, reads
    key = next(r for r in by_kind(objects, "Role") if r["metadata"]["name"] == "sw-shardwright-token-key")
    assert key["rules"][0] == {"apiGroups": [""], "resources": ["secrets"], "resourceNames": ["sw-shardwright-token-key"], "verbs": ["get"]}
    args = by_kind(objects, "Deployment")[0]["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--token-key-secret=shardwright-system/sw-shardwright-token-key" in args


def test_more_than_one_replica_needs_the_lease():
    with pytest.raises(helm.HelmError, match="replicaCount above 1 needs leaderElection.enabled"):
        render({"leaderElection": {"enabled": False}})


def test_non_default_values_take_effect():
    objects = render(NON_DEFAULT)
    assert not by_kind(objects, "CustomResourceDefinition")
    roles = {(r["metadata"]["namespace"], r["metadata"]["name"]): r["rules"] for r in by_kind(objects, "Role")}
    assert set(roles) == {("team-a", "sw-shardwright-jobs"), ("team-b", "sw-shardwright-jobs"),
                          ("shardwright-system", "sw-shardwright-webhook"), ("shardwright-system", "sw-shardwright-token-key")}  # no Lease Role
    bindings = {(b["metadata"]["namespace"], b["roleRef"]["name"]) for b in by_kind(objects, "RoleBinding")}
    assert {("team-a", "sw-shardwright-jobs"), ("team-b", "sw-shardwright-jobs")} <= bindings
    assert not by_kind(objects, "Secret") and not by_kind(objects, "ConfigMap")
    args = by_kind(objects, "Deployment")[0]["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--namespace=team-a" in args and "--gang-scheduler=volcano" in args
    assert not any(a.startswith("--lease-namespace") for a in args)
    rules = by_kind(objects, "ClusterRole")[0]["rules"]
    # Watched namespaces named: what jobs need is granted there only, the cluster keeps the rest.
    assert {x for r in rules for x in r["resources"]} == {"nodes", "namespaces", "customresourcedefinitions"}
    jobs = roles[("team-a", "sw-shardwright-jobs")]
    assert any(r["apiGroups"] == ["scheduling.volcano.sh"] for r in jobs)
    assert next(r for r in jobs if r["resources"] == ["trainingjobs/finalizers"])["verbs"] == ["update"]
    assert "--cordon-nodes" in args and "--worker-service-account=trainers" in args
    assert set(next(r for r in rules if r["resources"] == ["nodes"])["verbs"]) == {"list", "watch", "patch"}
    assert next(r for r in rules if r["resources"] == ["namespaces"])["verbs"] == ["list", "watch"]  # Kopf observes team-a
    assert by_kind(objects, "ServiceMonitor")[0]["metadata"]["labels"]["release"] == "prom"


def test_values_schema_rejects_a_typo():
    chart = helm.Chart.load(str(CHART))
    with pytest.raises(helm.HelmError):
        chart.validate_schema({"webhook": {"failurePolicy": "fail"}})


def test_examples_are_valid_against_the_crd_schema():
    from tests.support.schema_check import check  # the CRD-schema checker the API tests use

    schemas = {}
    for file in (CHART / "crd-files").glob("*.yaml"):
        crd = yaml.safe_load(file.read_text())
        schemas[crd["spec"]["names"]["kind"]] = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    checked = set()
    for path in sorted((ROOT / "examples").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                assert not check(schemas[doc["kind"]], doc), path
                checked.add(doc["kind"])
    assert checked == set(schemas)  # every kind has an example


def test_dashboard_queries_only_exported_metrics():
    from shardwright.operator import metrics

    exported = set(metrics.METRIC_NAMES) | rank_metric_names() | replica_metric_names()
    # A histogram exports <name>_bucket/_sum/_count series.
    known = exported | {f"{n}_{s}" for n in exported for s in ("bucket", "sum", "count")}
    for board in ("shardwright-training.json", "shardwright-serving.json"):
        queried = set()
        for panel in json.loads((CHART / "dashboards" / board).read_text())["panels"]:
            for target in panel["targets"]:
                queried |= set(re.findall(r"\b(?:shardwright_|vllm:)[a-z0-9_]+", target["expr"]))
        assert queried and queried <= known, (board, queried - known)


def replica_metric_names() -> set[str]:
    """Names a serving replica serves (workers/serve/metrics.py), after a request and an iteration."""
    from prometheus_client.parser import text_string_to_metric_families

    from shardwright.workers.serve.metrics import ServingMetrics

    m = ServingMetrics(model_name="m", pool="p", namespace="n", replica=0)
    m.finished("stop", seconds=0.1, prompt_tokens=3, output_tokens=2)
    m.rejected(400)
    return {s.name for f in text_string_to_metric_families(m.exposition().decode()) for s in f.samples}


def rank_metric_names() -> set[str]:
    """Names the rank processes register (workers/telemetry.py), read from its source so the
    test does not import torch."""
    source = (ROOT / "workers" / "telemetry.py").read_text()
    names = set()
    for kind, name in re.findall(r'(Counter|Gauge|Histogram)\b[^"]*"(shardwright_[a-z0-9_]+)"', source):
        names.add(name + "_total" if kind == "Counter" and not name.endswith("_total") else name)
    return names


def test_operator_metric_names_match_what_the_registry_serves():
    from prometheus_client import generate_latest

    from shardwright.operator import metrics
    from shardwright.operator.api import ServingPoolStatus, TrainingJobStatus

    m = metrics.OperatorMetrics()
    evaluation = {"step": 3, "loss": 2.1, "perplexity": 8.17}
    m.jobs.update("ns", "job", TrainingJobStatus(step=3, tokens_per_second=1.0, loss=2.0, evaluation=evaluation), "torch")
    m.pools.update("ns", "pool", ServingPoolStatus(roles=[{"name": "unified", "replicas": 2}]))
    m.reconcile_seconds.observe(0.01)
    m.reconcile_errors.labels(reason="temporary").inc()
    text = "\n".join(line for line in generate_latest(m.registry).decode().splitlines() if "_created" not in line)
    served = set(re.findall(r"^(shardwright_[a-z0-9_]+?)(?:_bucket|_sum|_count)?[{ ]", text, re.M))
    assert served == set(metrics.METRIC_NAMES) - {"shardwright_trainingjob_checkpoint_step"}
