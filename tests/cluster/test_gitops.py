"""examples/gitops/ checked as Argo CD and Flux would meet it, on the local control plane.

- The tools' own CRDs (Application; GitRepository, Kustomization, HelmRelease), fetched from
  their Go modules by e2e/cluster/gitops_crds.sh, are installed; every example passes a
  server-side dry run against them, and a copy with a field of the wrong type is refused.
- Every repository path an example names exists.
- The chart's fields that differ between two renders (Argo CD renders again and again) are
  exactly those the Argo CD Application ignores.
- A TrainingJob applied as each tool applies it (its field manager, its tracking marks) and
  run by the operator to Complete: applying it again changes nothing. A readmit request
  committed to git (``spec.readmit``) is acknowledged in ``status.readmitted``; applying it
  again changes nothing, and no field of the spec is ever written by the operator.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.support.cluster import get_json, wait_for

pytestmark = pytest.mark.cluster
ROOT = Path(__file__).resolve().parents[2]
GITOPS = ROOT / "examples" / "gitops"
TOOL_NAMESPACES = ("argocd", "flux-system")


def docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def objects() -> list[tuple[str, dict]]:
    """Every object under examples/gitops/ that a GitOps tool's controller reads, by file."""
    return [(f"{p.relative_to(GITOPS)}#{i}", d) for p in sorted(GITOPS.rglob("*.yaml")) if p.name != "kustomization.yaml"
            for i, d in enumerate(docs(p))]


@pytest.fixture(scope="module")
def tool_crds(control_plane) -> Iterator[Path]:
    """The Argo CD and Flux CRDs installed, and the namespaces their objects live in."""
    out = subprocess.run(["bash", str(ROOT / "e2e" / "cluster" / "gitops_crds.sh")], capture_output=True, text=True, timeout=1200)
    assert out.returncode == 0, f"e2e/cluster/gitops_crds.sh failed:\n{out.stderr[-3000:]}"
    folder = Path(out.stdout.strip().splitlines()[-1])
    control_plane.kubectl("apply", "--server-side", "-f", str(folder))
    control_plane.kubectl("wait", "--for=condition=Established", "--timeout=60s", "-f", str(folder))
    for ns in TOOL_NAMESPACES:
        control_plane.kubectl("create", "namespace", ns, check=False)
    yield folder
    control_plane.kubectl("delete", "--wait=false", "-f", str(folder), check=False)
    control_plane.kubectl("delete", "namespace", "--wait=false", *TOOL_NAMESPACES, check=False)


def dry_run(kube, doc: dict, *extra: str) -> subprocess.CompletedProcess:
    return kube.kubectl("apply", "--server-side", "--dry-run=server", "--field-manager=gitops-test", *extra, "-f", "-",
                        input=json.dumps(doc), check=False)


@pytest.mark.parametrize("where,doc", objects(), ids=[w for w, _ in objects()])
def test_every_example_passes_the_tools_own_schema(kube, tool_crds, where, doc):
    out = dry_run(kube, doc)
    assert out.returncode == 0, f"{where}: {out.stderr}"


def test_the_kustomize_overlay_builds_the_example_job_and_passes_its_schema(kube, namespace):
    built = kube.kubectl("kustomize", "--load-restrictor=LoadRestrictionsNone", str(GITOPS / "jobs")).stdout
    jobs = [d for d in yaml.safe_load_all(built) if d]
    assert [d["kind"] for d in jobs] == ["TrainingJob"]
    assert jobs == docs(ROOT / "examples" / "tiny-train.yaml")  # the example itself, nothing added
    out = dry_run(kube, jobs[0], "-n", namespace)
    assert out.returncode == 0, out.stderr


#: One wrong field type per kind; the API server must refuse each (so the test above can fail).
BROKEN = {
    "Application": (["spec", "syncPolicy", "automated", "prune"], "yes"),
    "GitRepository": (["spec", "interval"], 300),
    "Kustomization": (["spec", "prune"], "true"),
    "HelmRelease": (["spec", "chart", "spec", "sourceRef"], "shardwright"),
}


@pytest.mark.parametrize("kind", BROKEN)
def test_a_copy_with_a_wrong_field_type_is_refused(kube, tool_crds, kind):
    where, doc = next((w, copy.deepcopy(d)) for w, d in objects() if d["kind"] == kind)
    path, value = BROKEN[kind]
    node = doc
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    out = dry_run(kube, doc)
    assert out.returncode != 0, f"{where} with {'.'.join(path)}={value!r} was accepted"
    assert "failed to create typed patch object" in out.stderr and f".{'.'.join(path)}: expected " in out.stderr, out.stderr


def test_every_path_an_example_names_exists_in_the_repository():
    named = []
    for where, doc in objects():
        spec = doc.get("spec", {})  # a ConfigMap (argocd-cm) has none
        match doc["kind"]:
            case "Application":
                source = spec["source"]
                named.append((where, Path(source["path"]) / source.get("directory", {}).get("include", "")))
            case "Kustomization":
                named.append((where, Path(spec["path"])))
            case "HelmRelease":
                named.append((where, Path(spec["chart"]["spec"]["chart"]) / "Chart.yaml"))
    assert {d["kind"] for _, d in objects()} == {"Application", "GitRepository", "Kustomization", "HelmRelease", "ConfigMap"}
    assert len(named) == 5
    missing = [(w, str(p)) for w, p in named if not (ROOT / p).exists()]
    assert not missing


# ----------------------------------------------------------------------------- Argo CD renders


def render(kube, app: dict, tmp_path: Path) -> dict[tuple[str, str, str], dict]:
    """``helm template`` as Argo CD runs it for ``app``, by (kind, namespace, name)."""
    source, ns = app["spec"]["source"], app["spec"]["destination"]["namespace"]
    values = tmp_path / "values.yaml"
    values.write_text(yaml.safe_dump(source["helm"].get("valuesObject", {})))
    out = subprocess.run([str(kube.settings.bin_dir / "helm"), "template", source["helm"]["releaseName"], str(ROOT / source["path"]),
                          "-n", ns, "-f", str(values)], capture_output=True, text=True, timeout=120, check=True)
    return {(d["kind"], d["metadata"].get("namespace", ns), d["metadata"]["name"]): d for d in yaml.safe_load_all(out.stdout) if d}


def differing(a, b, pointer: str = "") -> list[str]:
    """JSON pointers of the leaves where ``a`` and ``b`` differ."""
    if isinstance(a, dict) and isinstance(b, dict):
        return [p for k in sorted(a.keys() | b.keys())
                for p in differing(a.get(k), b.get(k), f"{pointer}/{str(k).replace('~', '~0').replace('/', '~1')}")]
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [p for i, (x, y) in enumerate(zip(a, b)) for p in differing(x, y, f"{pointer}/{i}")]
    return [] if a == b else [pointer]


def test_two_renders_are_equal_and_argo_cd_ignores_only_the_injected_ca_bundle(kube, tmp_path):
    """Argo CD renders the chart again on every commit or cache expiry: nothing may differ
    (no certificate is rendered), and the one field the operator sets on a chart object,
    the webhook's caBundle, is never rendered and is what the Application ignores."""
    app = docs(GITOPS / "argocd" / "shardwright.yaml")[0]
    first, second = render(kube, app, tmp_path), render(kube, app, tmp_path)
    drifting = {(kind, ns, name, p) for (kind, ns, name), doc in first.items() for p in differing(doc, second.get((kind, ns, name)))}
    assert first.keys() == second.keys() and not drifting, f"differ between two renders (Argo CD would show them OutOfSync): {sorted(drifting)}"
    config = next(doc for (kind, _, _), doc in first.items() if kind == "ValidatingWebhookConfiguration")
    assert all("caBundle" not in hook["clientConfig"] for hook in config["webhooks"])
    assert app["spec"]["ignoreDifferences"] == [{"group": "admissionregistration.k8s.io", "kind": "ValidatingWebhookConfiguration",
                                                 "name": config["metadata"]["name"], "jqPathExpressions": [".webhooks[]?.clientConfig.caBundle"]}]


# ----------------------------------------------------------------------------- a running job


#: How each tool applies a manifest: its server-side apply field manager and its tracking marks.
TOOLS = {
    "argocd": ("argocd-controller", {"annotations": {"argocd.argoproj.io/tracking-id": "tiny-train:shardwright.io/TrainingJob:{ns}/tiny-train"}}),
    "flux": ("kustomize-controller", {"labels": {"kustomize.toolkit.fluxcd.io/name": "shardwright-jobs",
                                                 "kustomize.toolkit.fluxcd.io/namespace": "flux-system"}}),
}


def as_applied_by(tool: str, namespace: str, **spec: dict) -> dict:
    doc = docs(ROOT / "examples" / "tiny-train.yaml")[0]
    marks = json.loads(json.dumps(TOOLS[tool][1]).replace("{ns}", namespace))
    doc["metadata"].update(namespace=namespace, **marks)
    doc["spec"].update(spec)
    return doc


def tool_apply(kube, tool: str, doc: dict, *extra: str) -> subprocess.CompletedProcess:
    return kube.kubectl(*extra, "--server-side", f"--field-manager={TOOLS[tool][0]}", "-f", "-", input=json.dumps(doc), check=False)


def applied_by(obj: dict, tool: str) -> list[dict]:
    """The managedFields entries of the tool's field manager on ``obj``."""
    return [m for m in obj["metadata"]["managedFields"] if m["manager"] == TOOLS[tool][0]]


def spec_writers(obj: dict) -> list[str]:
    """The field managers that own any field of ``.spec``."""
    return sorted({m["manager"] for m in obj["metadata"]["managedFields"] if "f:spec" in m.get("fieldsV1", {})})


def owned(obj: dict) -> dict:
    """``obj`` as far as a GitOps tool owns it: no status, version or field managers."""
    return {**without_status(obj), "metadata": {**obj["metadata"], "resourceVersion": None, "managedFields": None}}


def without_status(obj: dict) -> dict:
    """``obj`` without what the operator writes: ``.status`` and the version it bumps."""
    return {**obj, "status": None, "metadata": {**obj["metadata"], "resourceVersion": None}}


@contextlib.contextmanager
def operator(kube, namespace: str, log: Path) -> Iterator[None]:
    """``shardwright operator`` out of cluster, watching ``namespace`` (no webhook, no lease)."""
    with open(log, "w") as sink:
        proc = subprocess.Popen([sys.executable, "-m", "shardwright.operator.cli", "operator", "--metrics-port=0", "--health-port=0",
                                 "--bind-address=127.0.0.1", "--webhook=off", f"--namespace={namespace}"],
                                stdout=sink, stderr=subprocess.STDOUT, env={**os.environ, "KUBECONFIG": str(kube.kubeconfig)},
                                start_new_session=True)
    try:
        yield
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    assert "Traceback" not in log.read_text(), log.read_text()[-3000:]


@pytest.mark.parametrize("tool", TOOLS)
def test_reapplying_an_unchanged_example_to_a_running_then_finished_job_changes_nothing(kube, namespace, process_nodes, tmp_path, tool):
    doc = as_applied_by(tool, namespace)
    with operator(kube, namespace, tmp_path / "operator.log"):
        out = tool_apply(kube, tool, doc, "apply")
        assert out.returncode == 0, out.stderr
        # While the operator runs it (generation 1 started, status written), re-applying
        # changes nothing the tool owns: a server-side dry run gives the live spec and
        # metadata. (Not `kubectl diff`: the operator may write .status between its two reads.)
        live = wait_for(lambda: (j := get_json(kube, "-n", namespace, "get", "tj", "tiny-train")).get("status", {}).get("generation") == 1
                        and j, 120, "generation 1 started", every=0.5)
        dry = tool_apply(kube, tool, doc, "apply", "--dry-run=server", "-o", "json")
        assert dry.returncode == 0, dry.stderr
        assert differing(owned(live), owned(json.loads(dry.stdout))) == []
        try:  # minutes on a loaded machine: the ranks import torch and train 120 steps
            final = wait_for(lambda: (s := get_json(kube, "-n", namespace, "get", "tj", "tiny-train").get("status") or {})
                             .get("phase") in ("Complete", "Failed") and s, 600, "a terminal phase", every=2.0)
        except AssertionError as e:
            pods = kube.kubectl("-n", namespace, "get", "pods,events", "-o", "wide", check=False).stdout
            raise AssertionError(f"{e}\n{pods}") from None
        assert final["phase"] == "Complete" and final["step"] == 120, final
        live = get_json(kube, "-n", namespace, "get", "tj", "tiny-train", "--show-managed-fields")
        assert not live["metadata"].get("finalizers")
        # Its children do not carry the tool's marks, so the tool never takes them for its own.
        children = get_json(kube, "-n", namespace, "get", "pods,services", "-l", "shardwright.io/job=tiny-train")["items"]
        marks = {k for kind in TOOLS[tool][1].values() for k in kind}
        assert children and not [c["metadata"]["name"] for c in children
                                 if marks & {*(c["metadata"].get("labels") or {}), *(c["metadata"].get("annotations") or {})}]

        diff = tool_apply(kube, tool, doc, "diff")
        assert diff.returncode == 0, f"kubectl diff shows drift:\n{diff.stdout}{diff.stderr}"
        assert tool_apply(kube, tool, doc, "apply").returncode == 0
        again = get_json(kube, "-n", namespace, "get", "tj", "tiny-train", "--show-managed-fields")
        # Not even a write: the tool's managedFields entry (its time included) is as it was.
        # (The resourceVersion is no measure: the operator may still write .status.)
        assert applied_by(again, tool) == applied_by(live, tool)
        assert differing(without_status(live), without_status(again)) == []

        # A readmit request committed to git: acknowledged in status, never removed from the
        # spec, so re-applying it finds nothing to change (docs/gitops.md).
        process_nodes_readmit = {"nodes": [process_nodes[0]], "token": "2026-12-07"}
        committed = as_applied_by(tool, namespace, readmit=process_nodes_readmit)
        assert tool_apply(kube, tool, committed, "apply").returncode == 0
        acked = wait_for(lambda: (j := get_json(kube, "-n", namespace, "get", "tj", "tiny-train", "--show-managed-fields"))
                         .get("status", {}).get("readmitted") and j, 120, "the readmit acknowledged", every=1.0)
        assert acked["status"]["readmitted"] == process_nodes_readmit and acked["spec"]["readmit"] == process_nodes_readmit
        events = get_json(kube, "-n", namespace, "get", "events", "--field-selector=reason=ReadmitIgnored")["items"]
        assert [e["message"] for e in events] == [f"Not avoided by this job, nothing to readmit: {process_nodes[0]} (status.avoidedNodes: none)"]
        diff = tool_apply(kube, tool, committed, "diff")
        assert diff.returncode == 0, f"kubectl diff shows drift after the readmit:\n{diff.stdout}{diff.stderr}"
        assert tool_apply(kube, tool, committed, "apply").returncode == 0
        after = get_json(kube, "-n", namespace, "get", "tj", "tiny-train", "--show-managed-fields")
        assert applied_by(after, tool) == applied_by(acked, tool) and after["status"]["readmitted"] == process_nodes_readmit
        assert spec_writers(after) == [TOOLS[tool][0]], after["metadata"]["managedFields"]
