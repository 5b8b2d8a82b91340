"""The cluster a chaos run strikes: the local control plane (a short node grace period, so a
silent node is NotReady within seconds), the process-backed nodes, the chart with its two
operator replicas, a namespace whose jobs share a hostPath checkpoint claim; and the
recorder of every rank pod's life, read from one watch in resourceVersion order."""

from __future__ import annotations

import json
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

from e2e.cluster import session
from e2e.cluster.controlplane import ControlPlane, Settings

ROOT = Path(__file__).resolve().parents[1]
SYSTEM = "shardwright-system"
NS = "chaos"
CLAIM = "checkpoints"
AGENT = "node-agent"
OPERATOR_SA = "sw-shardwright"
JOB_LABEL = "shardwright.io/job"
GEN_LABEL = "shardwright.io/generation"
#: Seconds without a heartbeat before a node is NotReady (the agent renews every 10 s).
NODE_GRACE_S = 16


class Cluster:
    """The control plane with the chart installed; ``kubectl`` and ``json`` against it."""

    def __init__(self, state: Path) -> None:
        self.state = state
        self.storage = state / "volumes"
        self.cp = ControlPlane(Settings(bin_dir=session.binaries(), state_dir=state / "cp",
                                        crds=tuple(sorted((ROOT / "crds").glob("*.yaml"))), node_monitor_grace_s=NODE_GRACE_S))
        self.env: dict[str, str] = {}

    def start(self) -> None:
        self.cp.start()
        self.env = session.environ(self.cp)
        session.start_node_agent(self.cp, name=AGENT)
        self.storage.mkdir(parents=True, exist_ok=True)
        self.kubectl("create", "namespace", NS)
        self.apply({"apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": f"{NS}-checkpoints"},
                    "spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteMany"], "storageClassName": "",
                             "hostPath": {"path": str(self.storage)}, "claimRef": {"namespace": NS, "name": CLAIM}}})
        self.apply({"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": CLAIM, "namespace": NS},
                    "spec": {"accessModes": ["ReadWriteMany"], "storageClassName": "", "resources": {"requests": {"storage": "1Gi"}}}})
        self.run("helm", "install", "sw", str(ROOT / "helm" / "shardwright"), "-n", SYSTEM, "--create-namespace", "--wait",
                 "--timeout=5m", "--take-ownership", "--set", "image.repository=shardwright", "--set", "image.tag=dev",
                 "--set", f"checkpoints.claim={CLAIM}", "--set", "statusProgressSeconds=2", timeout=330)
        example = str(ROOT / "examples" / "tiny-train.yaml")
        wait(lambda: self.kubectl("-n", NS, "apply", "--dry-run=server", "-f", example, check=False).returncode == 0,
             180, "the webhook serving")

    def stop(self) -> None:
        self.cp.stop()

    @property
    def paused_file(self) -> Path:
        """The node agent's list of nodes whose heartbeat stops (nodeagent.heartbeat)."""
        return self.cp.dir / AGENT / "paused-nodes"

    def run(self, *args: str, input: str | None = None, timeout: float = 60, check: bool = True) -> subprocess.CompletedProcess:
        out = subprocess.run(args, env=self.env, input=input, capture_output=True, text=True, timeout=timeout)
        if check and out.returncode != 0:
            raise RuntimeError(f"{' '.join(args)} exited {out.returncode}: {out.stderr[-1500:]}")
        return out

    def kubectl(self, *args: str, **kw) -> subprocess.CompletedProcess:
        return self.run("kubectl", *args, **kw)

    def json(self, *args: str) -> Any:
        return json.loads(self.kubectl(*args, "-o", "json").stdout)

    def apply(self, doc: dict) -> None:
        self.kubectl("apply", "-f", "-", input=json.dumps(doc))

    def jobs(self) -> dict[str, dict]:
        """Every TrainingJob of the namespace by name (empty while the API is down)."""
        out = self.kubectl("-n", NS, "get", "tj", "-o", "json", check=False, timeout=20)
        return {j["metadata"]["name"]: j for j in json.loads(out.stdout)["items"]} if out.returncode == 0 else {}

    def pods(self, *selector: str, ns: str = NS) -> list[dict]:
        out = self.kubectl("-n", ns, "get", "pods", *selector, "-o", "json", check=False, timeout=20)
        return json.loads(out.stdout)["items"] if out.returncode == 0 else []

    def tainted(self, node: str) -> bool:
        """Whether the node still carries a taint the node lifecycle controller set (NotReady
        or unreachable): pods placed there meanwhile may still be evicted."""
        taints = self.json("get", "node", node)["spec"].get("taints") or []
        return any(t["key"] in ("node.kubernetes.io/unreachable", "node.kubernetes.io/not-ready") for t in taints)

    def nodes_ready(self) -> dict[str, bool]:
        out = self.kubectl("get", "nodes", "-o", "json", check=False, timeout=20)
        if out.returncode != 0:
            return {}
        return {n["metadata"]["name"]: any(c["type"] == "Ready" and c["status"] == "True" for c in n["status"].get("conditions", []))
                for n in json.loads(out.stdout)["items"]}


def wait(check, timeout: float, what: str, every: float = 1.0):
    """Poll ``check`` until truthy; raise naming ``what``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if value := check():
                return value
        except (subprocess.SubprocessError, json.JSONDecodeError, KeyError):
            pass
        time.sleep(every)
    raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")


class PodLives:
    """Every rank pod's life from its watch events, in the API server's order, so two
    generations of a job alive at once is seen exactly as the API held them. A pod is alive
    from its creation until it is deleted or its phase is Succeeded/Failed (its processes
    are gone)."""

    def __init__(self) -> None:
        self.alive: dict[str, tuple[str, int]] = {}  # pod name -> (job, generation)
        self.overlaps: list[str] = []
        self.ended: set[str] = set()
        self.placed: dict[str, tuple[str, int, str]] = {}  # pod name -> (job, generation, node)
        #: (job, generation) of every rank pod seen: a generation missing here never made its pods.
        self.generations: set[tuple[str, int]] = set()
        #: When each pod was first seen ending: deleted, being deleted, Succeeded or Failed.
        self.ending: dict[str, float] = {}
        #: Pods that Succeeded before anything deleted them: they finished their training. A
        #: rank asked to stop also exits 0 (Succeeded), but after its pod's deletion began.
        self.finished: set[str] = set()
        self.lock = threading.Lock()

    def ended_on(self, node: str, since: float, until: float) -> list[tuple[str, int]]:
        """(job, generation) of the pods on ``node`` that began to end in that window other
        than by finishing: the generations a node loss ended."""
        with self.lock:
            return sorted({(job, gen) for pod, (job, gen, at) in self.placed.items()
                           if at == node and since <= self.ending.get(pod, -1.0) <= until and pod not in self.finished})

    def gone(self, names: set[str], now: float) -> None:
        """A list after a break lacks these: they were deleted meanwhile."""
        with self.lock:
            for name in [p for p in self.alive if p not in names]:
                self.alive.pop(name)
                self.ended.add(name)
                self.ending.setdefault(name, now)

    def event(self, kind: str, pod: dict, now: float) -> None:
        meta = pod["metadata"]
        name, labels = meta["name"], meta.get("labels") or {}
        job, gen = labels.get(JOB_LABEL, ""), int(labels[GEN_LABEL])
        phase = (pod.get("status") or {}).get("phase")
        with self.lock:
            self.generations.add((job, gen))
            if node := (pod.get("spec") or {}).get("nodeName"):
                self.placed[name] = (job, gen, node)
            if name not in self.ending and (kind == "DELETED" or phase in ("Succeeded", "Failed") or meta.get("deletionTimestamp")):
                self.ending[name] = now
                if phase == "Succeeded" and kind != "DELETED" and not meta.get("deletionTimestamp"):
                    self.finished.add(name)
            if kind == "DELETED" or phase in ("Succeeded", "Failed"):
                self.alive.pop(name, None)
                self.ended.add(name)
                return
            if name in self.alive or name in self.ended:
                return
            others = sorted(p for p, (j, g) in self.alive.items() if j == job and g != gen)
            if others:
                self.overlaps.append(f"{name} (generation {gen}) created while {', '.join(others)} alive")
            self.alive[name] = (job, gen)


class PodRecorder(PodLives):
    """The rank pods' lives from one watch of the cluster, listed again after a break."""

    def __init__(self, cluster: Cluster) -> None:
        from kubernetes import client, config

        super().__init__()
        configuration = client.Configuration()
        config.load_kube_config(config_file=str(cluster.cp.kubeconfig), client_configuration=configuration)
        self.core = client.CoreV1Api(client.ApiClient(configuration))
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True, name="pod-recorder")

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.stopping.set()
        self.thread.join(timeout=70)

    def _loop(self) -> None:
        version = None
        while not self.stopping.is_set():
            try:
                if version is None:
                    listed = json.loads(self.core.list_namespaced_pod(NS, label_selector=GEN_LABEL, _preload_content=False,
                                                                      _request_timeout=30).data)
                    version = listed["metadata"]["resourceVersion"]
                    self.gone({p["metadata"]["name"] for p in listed["items"]}, time.monotonic())
                    for pod in listed["items"]:
                        self.event("ADDED", pod, time.monotonic())
                stream = self.core.list_namespaced_pod(NS, label_selector=GEN_LABEL, watch=True, resource_version=version,
                                                       allow_watch_bookmarks=True, timeout_seconds=30, _preload_content=False,
                                                       _request_timeout=60)
                for line in stream:
                    if self.stopping.is_set():
                        break
                    if not line.strip():
                        continue
                    event = json.loads(line)
                    if event["type"] == "ERROR":
                        version = None
                        break
                    version = event["object"]["metadata"]["resourceVersion"]
                    if event["type"] != "BOOKMARK":
                        self.event(event["type"], event["object"], time.monotonic())
                stream.release_conn()
            except Exception:  # the API server restarting: list again
                version = None
                self.stopping.wait(1.0)
