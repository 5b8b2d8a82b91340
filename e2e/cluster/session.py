"""A whole local cluster as tests and ``make cluster`` use it: the control plane plus its
node agents (process-backed nodes) and KWOK (simulated nodes), started and stopped as one."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import yaml

from shardwright.operator.backends.ports import free_port

from .buildscript import built
from .controlplane import ControlPlane, Settings

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
PROCESS_NODES = HERE / "nodes" / "process.yaml"
#: KWOK manages the nodes with this annotation only (never a process-backed one).
KWOK_ANNOTATION = "kwok.x-k8s.io/node"


def binaries() -> Path:
    """The binary folder, building it first when missing (build.sh; a no-op when cached)."""
    return built(HERE / "build.sh", "the control plane", timeout=5400)


def control_plane(state_dir: Path, *, die_with_parent: bool = True, crds: bool = True) -> ControlPlane:
    """``crds``: install this project's CRDs before the controller manager starts (tests);
    off for a cluster a user installs the chart into (the chart owns them there)."""
    crds = tuple(sorted((ROOT / "crds").glob("*.yaml"))) if crds else ()
    return ControlPlane(Settings(bin_dir=binaries(), state_dir=state_dir, crds=crds, die_with_parent=die_with_parent))


def start_node_agent(cp: ControlPlane, nodes: Path = PROCESS_NODES, name: str = "node-agent") -> None:
    """Process-backed nodes from a NodeList file; ready once every node is Ready."""
    state = cp.dir / name
    state.mkdir(parents=True, exist_ok=True)
    cp.add(name, [sys.executable, "-m", "e2e.cluster.nodeagent", f"--kubeconfig={cp.kubeconfig}", f"--nodes={nodes}",
                  f"--state={state}", f"--api-port={cp.api_port}"], health=None, cwd=ROOT)
    names = {n["metadata"]["name"] for n in read_nodes(nodes)}
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        listed = json.loads(cp.kubectl("get", "nodes", "-o", "json").stdout)["items"]
        ready = {n["metadata"]["name"] for n in listed
                 if any(c["type"] == "Ready" and c["status"] == "True" for c in n.get("status", {}).get("conditions", []))}
        if names <= ready:
            return
        time.sleep(0.2)
    raise RuntimeError(f"process-backed nodes {sorted(names - ready)} not Ready within 60 s; see {cp.dir / 'logs' / (name + '.log')}")


def start_kwok(cp: ControlPlane) -> None:
    """KWOK with its stage files: it initializes and heartbeats the annotated nodes and
    moves their pods to Running (and through deletion) without running anything. Its pod
    and node IPs are loopback addresses: whatever dials a simulated pod (the operator's
    probe of rank 0) stays on this machine and is refused at once."""
    stages = cp.settings.bin_dir.parent / "kwok-stages"
    configs = [stages / p for p in ("node/fast/node-initialize.yaml", "node/heartbeat-with-lease/node-heartbeat-with-lease.yaml",
                                    "pod/fast/pod-ready.yaml", "pod/fast/pod-complete.yaml", "pod/fast/pod-delete.yaml",
                                    "pod/chaos/pod-container-running-failed.yaml")]
    missing = [str(c) for c in configs if not c.exists()]
    if missing:
        raise RuntimeError(f"KWOK stage files missing: {', '.join(missing)} (e2e/cluster/build.sh copies them)")
    args = [str(cp.settings.bin_dir / "kwok"), f"--kubeconfig={cp.kubeconfig}", "--manage-all-nodes=false",
            f"--manage-nodes-with-annotation-selector={KWOK_ANNOTATION}=fake", f"--server-address=127.0.0.1:{free_port()}",
            "--cidr=127.200.0.0/16", "--node-ip=127.0.0.1"]
    args += [f"--config={c}" for c in configs]
    cp.add("kwok", args, health=None)


def kwok_nodes(nodelist: Path) -> list[dict]:
    """Node manifests of ``nodelist`` as KWOK nodes (annotation, taint-free, status kept)."""
    out = []
    for node in read_nodes(nodelist):
        meta = node.setdefault("metadata", {})
        meta.setdefault("annotations", {})[KWOK_ANNOTATION] = "fake"
        meta.setdefault("labels", {})["type"] = "kwok"
        out.append(node)
    return out


def read_nodes(path: Path) -> list[dict]:
    """The Node manifests of a NodeList (or Node) YAML file."""
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
    return [n for d in docs for n in (d.get("items") if d.get("kind") == "NodeList" else [d])]


def environ(cp: ControlPlane) -> dict[str, str]:
    """This process's environment pointed at the cluster, its kubectl and helm first on PATH."""
    return {**os.environ, "KUBECONFIG": str(cp.kubeconfig), "PATH": f"{cp.settings.bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}
