"""The CRDs apart from the operator's release: ``helm/shardwright-crds`` renders the generated
CRDs, kept on uninstall; on the local control plane the CRDs chart is installed, then the
operator chart with ``crds.install=false``, the CRDs chart upgraded (the newer CRD applied),
and both uninstalled: the CRDs and a TrainingJob stay."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.support.cluster import get_json

helm = pytest.importorskip("helm_python", reason="helm-python-sdk is not installed (pip install -e .[test])")

ROOT = Path(__file__).resolve().parents[2]
CRDS_CHART = ROOT / "helm" / "shardwright-crds"
TJ_CRD = "trainingjobs.shardwright.io"
KEEP = {"helm.sh/resource-policy": "keep"}


def generated() -> dict[str, dict]:
    return {(d := yaml.safe_load(p.read_text()))["metadata"]["name"]: d for p in sorted((ROOT / "crds").glob("*.yaml"))}


def test_the_crds_chart_renders_the_generated_crds_kept_on_uninstall():
    out = helm.Chart.load(str(CRDS_CHART)).render({}, name="sw-crds", namespace="shardwright-system")
    rendered = {d["metadata"]["name"]: d for text in out.values() for d in yaml.safe_load_all(text) if d}
    assert rendered.keys() == generated().keys() == {TJ_CRD, "servingpools.shardwright.io"}
    for name, crd in rendered.items():
        assert crd["metadata"].pop("annotations") == KEEP
        assert crd == generated()[name], f"helm/shardwright-crds/crd-files/{name}.yaml drifted: run `shardwright crds`"


def test_the_operator_chart_without_crds_renders_none():
    out = helm.Chart.load(str(ROOT / "helm" / "shardwright")).render({"crds": {"install": False}}, name="sw", namespace="shardwright-system")
    kinds = {d["kind"] for text in out.values() for d in yaml.safe_load_all(text) if d}
    assert "Deployment" in kinds and "CustomResourceDefinition" not in kinds


def older_crds_chart(tmp_path: Path) -> Path:
    """The CRDs chart as an earlier release had it: no ``spec.readmit``, no /scale."""
    chart = tmp_path / "shardwright-crds-old"
    shutil.copytree(CRDS_CHART, chart)
    path = chart / "crd-files" / f"{TJ_CRD}.yaml"
    crd = yaml.safe_load(path.read_text())
    version = crd["spec"]["versions"][0]
    del version["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]["readmit"]
    del version["subresources"]["scale"]
    path.write_text(yaml.safe_dump(crd, sort_keys=False))
    return chart


def live_crd(kube) -> dict:
    return get_json(kube, "get", "crd", TJ_CRD)


def has_readmit(crd: dict) -> bool:
    return "readmit" in crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]


@pytest.mark.cluster
def test_crds_chart_install_upgrade_and_uninstalls_keep_the_crds_and_jobs(kube, namespace, tmp_path):
    def helm_cli(*args: str) -> subprocess.CompletedProcess:
        out = subprocess.run([str(kube.settings.bin_dir / "helm"), *args, "-n", namespace], capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, f"helm {' '.join(args)}:\n{out.stderr}"
        return out

    # The control plane started with the CRDs applied server-side from crds/ (field manager
    # kubectl): the chart takes them over, forcing the conflicts with kubectl's fields once.
    helm_cli("install", "crds", str(older_crds_chart(tmp_path)), "--take-ownership", "--force-conflicts", "--wait", "--timeout=2m")
    crd = live_crd(kube)
    assert crd["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep" and crd["metadata"]["annotations"]["meta.helm.sh/release-name"] == "crds"
    assert not has_readmit(crd) and "scale" not in crd["spec"]["versions"][0]["subresources"]
    kube.kubectl("-n", namespace, "apply", "--server-side", "-f", str(ROOT / "examples" / "tiny-train.yaml"))
    uid = get_json(kube, "-n", namespace, "get", "tj", "tiny-train")["metadata"]["uid"]

    helm_cli("install", "sw", str(ROOT / "helm" / "shardwright"), "--set", "crds.install=false")
    manifest = helm_cli("get", "manifest", "sw").stdout
    assert "kind: Deployment" in manifest and "kind: CustomResourceDefinition" not in manifest

    # An upgrade of the CRDs chart applies the newer CRD (templates, unlike crds/, are upgraded).
    helm_cli("upgrade", "crds", str(CRDS_CHART), "--wait", "--timeout=2m")
    crd = live_crd(kube)
    assert has_readmit(crd) and crd["spec"]["versions"][0]["subresources"]["scale"]["specReplicasPath"] == ".spec.elastic.replicas"

    helm_cli("uninstall", "sw", "--wait", "--timeout=2m")
    assert live_crd(kube)["metadata"]["uid"] == crd["metadata"]["uid"]
    assert get_json(kube, "-n", namespace, "get", "tj", "tiny-train")["metadata"]["uid"] == uid
    gone = helm_cli("uninstall", "crds", "--wait", "--timeout=2m")
    assert "kept due to the resource policy" in gone.stdout + gone.stderr, gone.stdout + gone.stderr
    assert live_crd(kube)["metadata"]["uid"] == crd["metadata"]["uid"]
    assert get_json(kube, "-n", namespace, "get", "tj", "tiny-train")["metadata"]["uid"] == uid
