"""A node agent for process-backed nodes: Nodes whose pods really run, as local processes.

It does for its nodes what a kubelet does, on one machine and without a container runtime
(sandbox.py says how a container runs): registers each Node with its GPU capacity and labels,
keeps its Lease fresh, runs every pod the scheduler binds to it (init containers, then
containers; restartPolicy honoured), resolves the pod's env (downward API, secret and
configMap references, ``$(VAR)``), mounts its volumes, gives it one loopback IP and the
cluster's pod DNS names in /etc/hosts, runs readiness probes (httpGet, tcpSocket), and
writes phase, conditions and containerStatuses with real exit codes. A deleted pod gets
SIGTERM, then SIGKILL after its grace period, and is then removed from the API, as a
kubelet does. Liveness and startup probes are not run; resources are not enforced.

    python -m e2e.cluster.nodeagent --kubeconfig K --nodes NODES.yaml --state DIR
"""

from __future__ import annotations

import argparse
import base64
import dataclasses
import datetime
import json
import logging
import os
import queue
import re
import signal
import socket
import subprocess
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client, config as kube_config
from kubernetes.client.exceptions import ApiException

from . import podnet, sandbox

log = logging.getLogger("nodeagent")
KUBELET_VERSION = "v1.37.2"
#: Seconds between Lease renewals (the kubelet's default is a quarter of 40 s).
LEASE_RENEW_S = 10.0
LEASE_DURATION_S = 40
#: HOME and default working directory of a pod's processes (a folder of the pod's own).
POD_HOME = "/home/shardwright-pod"


def now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def micro_now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _json(response) -> Any:
    return json.loads(response.data)


# ----------------------------------------------------------------------------- running pods


@dataclasses.dataclass
class Container:
    spec: dict[str, Any]
    init: bool
    process: subprocess.Popen | None = None
    started_at: str | None = None
    finished_at: str | None = None
    exit_code: int | None = None
    signal: int | None = None
    restarts: int = 0
    ready: bool = False
    next_probe: float = 0.0
    last_state: dict[str, Any] | None = None
    #: monotonic time before which a restart waits (CrashLoopBackOff, as the kubelet's).
    not_before: float = 0.0

    @property
    def name(self) -> str:
        return self.spec["name"]

    @property
    def running(self) -> bool:
        return self.process is not None and self.exit_code is None


@dataclasses.dataclass
class Pod:
    """One pod this agent runs, and what the kubelet would know of it."""

    body: dict[str, Any]
    node: str
    ip: str
    netns: str
    dir: Path
    containers: list[Container]
    started_at: str = dataclasses.field(default_factory=now)
    deleting_until: float | None = None
    written: dict[str, Any] | None = None
    failed_start: str | None = None
    volumes: dict[str, Path] | None = None
    retry_at: float = 0.0

    @property
    def key(self) -> tuple[str, str]:
        m = self.body["metadata"]
        return m["namespace"], m["name"]

    @property
    def uid(self) -> str:
        return self.body["metadata"]["uid"]

    @property
    def policy(self) -> str:
        return self.body["spec"].get("restartPolicy", "Always")

    def stage(self) -> list[Container]:
        """The containers that run now: the first unfinished init container, else the app ones."""
        for c in self.containers:
            if c.init and c.exit_code != 0:
                return [c]
        return [c for c in self.containers if not c.init]


class NodeAgent:
    """Runs the pods bound to ``nodes`` (Node manifests) as processes on this machine."""

    def __init__(self, api: client.ApiClient, nodes: list[dict[str, Any]], state: Path, api_port: int) -> None:
        self.api = api
        self.core = client.CoreV1Api(api)
        self.coord = client.CoordinationV1Api(api)
        self.nodes = {n["metadata"]["name"]: n for n in nodes}
        self.state = state
        self.api_port = api_port
        self.network = podnet.PodNetwork()
        self.pods: dict[str, Pod] = {}  # by uid
        #: Pod DNS names of the whole cluster: ip -> names (rewritten into every pod's hosts).
        self.dns: dict[str, list[str]] = {}
        self.events: queue.Queue = queue.Queue()
        self.stopping = threading.Event()
        self.paused: set[str] = set()

    # ------------------------------------------------------------------ nodes

    def register(self) -> None:
        for i, (name, node) in enumerate(self.nodes.items()):
            meta = node.get("metadata", {})
            labels = {"kubernetes.io/hostname": name, "kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64",
                      "shardwright.io/node-agent": "process", **(meta.get("labels") or {})}
            body = {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "labels": labels, "annotations": meta.get("annotations") or {}},
                    "spec": {k: v for k, v in (node.get("spec") or {}).items() if k in ("taints", "unschedulable")}}
            try:
                self.core.create_node(body, _preload_content=False)
            except ApiException as e:
                if e.status != 409:
                    raise
            self._node_status(name)
            self._renew(name)

    def _node_status(self, name: str) -> None:
        node = self.nodes[name]
        alloc = {"cpu": "16", "memory": "64Gi", "pods": "110", "ephemeral-storage": "100Gi",
                 **((node.get("status") or {}).get("allocatable") or {})}
        t = now()
        conditions = [
            {"type": "Ready", "status": "True", "reason": "KubeletReady", "message": "process-backed node agent is posting ready status",
             "lastHeartbeatTime": t, "lastTransitionTime": t},
            *({"type": c, "status": "False", "reason": f"KubeletHas{r}", "message": "", "lastHeartbeatTime": t, "lastTransitionTime": t}
              for c, r in (("MemoryPressure", "SufficientMemory"), ("DiskPressure", "NoDiskPressure"), ("PIDPressure", "SufficientPID"))),
        ]
        status = {"capacity": alloc, "allocatable": alloc, "conditions": conditions,
                  "addresses": [{"type": "InternalIP", "address": self.network.gateway}, {"type": "Hostname", "address": name}],
                  "nodeInfo": {"kubeletVersion": KUBELET_VERSION, "operatingSystem": "linux", "architecture": "amd64",
                               "containerRuntimeVersion": "process://shardwright-node-agent", "kernelVersion": os.uname().release,
                               "osImage": "process-backed", "machineID": name, "systemUUID": name, "bootID": name, "kubeProxyVersion": ""}}
        self.core.patch_node_status(name, {"status": status}, _preload_content=False)

    def _renew(self, name: str) -> None:
        body = {"metadata": {"name": name, "namespace": "kube-node-lease"},
                "spec": {"holderIdentity": name, "leaseDurationSeconds": LEASE_DURATION_S, "renewTime": micro_now()}}
        try:
            self.coord.patch_namespaced_lease(name, "kube-node-lease", body, _preload_content=False)
        except ApiException as e:
            if e.status != 404:
                raise
            self.coord.create_namespaced_lease("kube-node-lease", body, _preload_content=False)

    def heartbeat(self) -> None:
        """Lease every 10 s; Node status every minute (both as the kubelet does). A node named
        in ``<state>/paused-nodes`` stops both: its node lifecycle controller sees it die."""
        last_status = time.monotonic()
        while not self.stopping.wait(LEASE_RENEW_S):
            paused = set((self.state / "paused-nodes").read_text().split()) if (self.state / "paused-nodes").exists() else set()
            for name in self.nodes:
                if name in paused:
                    continue
                try:
                    self._renew(name)
                    if time.monotonic() - last_status > 60 or name in self.paused:
                        self._node_status(name)
                except Exception as e:  # the API server may be restarting
                    log.warning(f"heartbeat of {name}: {e}")
            if time.monotonic() - last_status > 60:
                last_status = time.monotonic()
            self.paused = paused

    # ------------------------------------------------------------------ watching

    def watch(self) -> None:
        """Every pod of the cluster (DNS names need all of them) into the event queue."""
        version = None
        while not self.stopping.is_set():
            try:
                if version is None:
                    listed = _json(self.core.list_pod_for_all_namespaces(_preload_content=False, _request_timeout=30))
                    version = listed["metadata"]["resourceVersion"]
                    self.events.put(("LIST", listed["items"]))
                stream = self.core.list_pod_for_all_namespaces(
                    watch=True, resource_version=version, allow_watch_bookmarks=True, timeout_seconds=60,
                    _preload_content=False, _request_timeout=90)
                for line in stream:
                    if not line.strip():
                        continue
                    event = json.loads(line)
                    if event["type"] == "ERROR":
                        version = None  # 410 Gone: list again
                        break
                    version = event["object"]["metadata"]["resourceVersion"]
                    if event["type"] != "BOOKMARK":
                        self.events.put((event["type"], event["object"]))
                    if self.stopping.is_set():
                        break
                stream.release_conn()
            except Exception as e:
                log.warning(f"pod watch: {e}; again in 1 s")
                version = None
                self.stopping.wait(1)

    # ------------------------------------------------------------------ the loop

    def run(self) -> None:
        self.register()
        threading.Thread(target=self.heartbeat, daemon=True, name="heartbeat").start()
        threading.Thread(target=self.watch, daemon=True, name="watch").start()
        while not self.stopping.is_set():
            try:
                kind, obj = self.events.get(timeout=0.2)
                self._event(kind, obj)
                while True:
                    kind, obj = self.events.get_nowait()
                    self._event(kind, obj)
            except queue.Empty:
                pass
            for pod in list(self.pods.values()):
                try:
                    self._tick(pod)
                except Exception as e:
                    log.exception(f"pod {pod.key}: {e}")
        self.shutdown()

    def shutdown(self) -> None:
        """Kill every container this agent started and take its pod network down."""
        for pod in list(self.pods.values()):
            self._gone(pod)
        self.network.close()

    def _event(self, kind: str, obj: Any) -> None:
        if kind == "LIST":
            uids = {p["metadata"]["uid"] for p in obj}
            for uid in [u for u in self.pods if u not in uids]:
                self._gone(self.pods[uid])
            self.dns = {}
            for body in obj:
                self._observe(body)
        elif kind == "DELETED":
            self._forget_dns(obj)
            if (pod := self.pods.get(obj["metadata"]["uid"])) is not None:
                self._gone(pod)
        else:
            self._observe(obj)
        self._write_hosts()

    def _observe(self, body: dict[str, Any]) -> None:
        self._remember_dns(body)
        uid, node = body["metadata"]["uid"], body["spec"].get("nodeName")
        pod = self.pods.get(uid)
        if pod is None and node in self.nodes and not body["metadata"].get("deletionTimestamp") \
                and body.get("status", {}).get("phase") not in ("Succeeded", "Failed"):
            self._admit(body, node)
        elif pod is not None:
            pod.body = body
            if body["metadata"].get("deletionTimestamp") and pod.deleting_until is None:
                grace = body["metadata"].get("deletionGracePeriodSeconds")
                grace = 30 if grace is None else grace
                pod.deleting_until = time.monotonic() + grace
                for c in pod.containers:
                    _signal(c, signal.SIGTERM if grace > 0 else signal.SIGKILL)

    # ------------------------------------------------------------------ one pod

    def _admit(self, body: dict[str, Any], node: str) -> None:
        meta = body["metadata"]
        netns, ip = self.network.add(meta["uid"][:8], self.api_port)
        folder = self.state / "pods" / f"{meta['namespace']}_{meta['name']}_{meta['uid'][:8]}"
        folder.mkdir(parents=True, exist_ok=True)
        containers = [Container(c, True) for c in body["spec"].get("initContainers") or []] + \
                     [Container(c, False) for c in body["spec"]["containers"]]
        pod = Pod(body, node, ip, netns, folder, containers)
        self.pods[meta["uid"]] = pod
        body.setdefault("status", {})["podIP"] = ip
        self._remember_dns(body)
        log.info(f"pod {meta['namespace']}/{meta['name']} on {node} at {ip}")

    def _tick(self, pod: Pod) -> None:
        if pod.deleting_until is not None:
            self._reap(pod)
            if all(not c.running for c in pod.containers) or time.monotonic() > pod.deleting_until:
                for c in pod.containers:
                    _signal(c, signal.SIGKILL)
                self._reap(pod)
                self._finalize_delete(pod)
            return
        if pod.volumes is None and time.monotonic() >= pod.retry_at:
            try:
                self._prepare(pod)
                pod.failed_start = None
            except Exception as e:  # a missing secret, configMap or unbound claim: the kubelet retries too
                pod.failed_start = f"{type(e).__name__}: {e}"
                pod.retry_at = time.monotonic() + 2.0
        self._reap(pod)
        phase = self._phase(pod)
        if phase in ("Pending", "Running") and pod.volumes is not None:
            for c in pod.stage():
                if c.process is None or (c.exit_code is not None and self._restarts(pod, c) and time.monotonic() >= c.not_before):
                    self._start(pod, c)
            self._probe(pod)
        self._write_status(pod)

    def _restarts(self, pod: Pod, c: Container) -> bool:
        if pod.policy == "Always" and not c.init:
            return True
        return pod.policy in ("Always", "OnFailure") and c.exit_code != 0

    def _phase(self, pod: Pod) -> str:
        apps = [c for c in pod.containers if not c.init]
        inits_done = all(c.exit_code == 0 for c in pod.containers if c.init)
        if pod.policy == "Never" and any(c.exit_code not in (None, 0) for c in pod.containers):
            return "Failed"
        if inits_done and all(c.exit_code is not None for c in apps) and pod.policy != "Always":
            return "Succeeded" if all(c.exit_code == 0 for c in apps) else ("Failed" if pod.policy == "Never" else "Running")
        if inits_done and any(c.process is not None for c in apps):
            return "Running"
        return "Pending"

    def _reap(self, pod: Pod) -> None:
        for c in pod.containers:
            if c.running and (code := c.process.poll()) is not None:
                c.exit_code, c.signal = (128 - code, -code) if code < 0 else (code, None)
                c.finished_at, c.ready = now(), False
                c.not_before = time.monotonic() + min(10.0 * 2 ** c.restarts, 300.0)
                log.info(f"pod {pod.key} container {c.name} exited {c.exit_code}")

    # ------------------------------------------------------------------ starting

    def _prepare(self, pod: Pod) -> None:
        """Volumes into folders (once per pod)."""
        pod.volumes = {v["name"]: self._volume(pod, v) for v in pod.body["spec"].get("volumes") or []}

    def _volume(self, pod: Pod, v: dict[str, Any]) -> Path:
        ns = pod.key[0]
        folder = pod.dir / "volumes" / v["name"]
        if "persistentVolumeClaim" in v:
            return self._claim(ns, v["persistentVolumeClaim"]["claimName"])
        if "hostPath" in v:
            return Path(v["hostPath"]["path"])
        folder.mkdir(parents=True, exist_ok=True)
        if "secret" in v:
            secret = _json(self.core.read_namespaced_secret(v["secret"]["secretName"], ns, _preload_content=False))
            _write_items(folder, {k: base64.b64decode(d) for k, d in (secret.get("data") or {}).items()}, v["secret"].get("items"))
        elif "configMap" in v:
            cm = _json(self.core.read_namespaced_config_map(v["configMap"]["name"], ns, _preload_content=False))
            _write_items(folder, {k: d.encode() for k, d in (cm.get("data") or {}).items()}, v["configMap"].get("items"))
        elif "projected" in v:
            for source in v["projected"].get("sources") or []:
                self._projected(pod, folder, source)
        elif "downwardAPI" in v:
            self._projected(pod, folder, {"downwardAPI": v["downwardAPI"]})
        return folder

    def _claim(self, ns: str, name: str) -> Path:
        """A bound claim's volume: its PersistentVolume's hostPath, else a folder per volume
        under the agent's state (shared by every process-backed node, as ReadWriteMany)."""
        claim = _json(self.core.read_namespaced_persistent_volume_claim(name, ns, _preload_content=False))
        volume = claim["spec"].get("volumeName")
        if not volume:
            raise RuntimeError(f"PersistentVolumeClaim {ns}/{name} is not bound")
        pv = _json(self.core.read_persistent_volume(volume, _preload_content=False))
        folder = Path(pv["spec"]["hostPath"]["path"]) if pv["spec"].get("hostPath") else self.state / "volumes" / volume
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    def _projected(self, pod: Pod, folder: Path, source: dict[str, Any]) -> None:
        ns, meta = pod.key[0], pod.body["metadata"]
        if (sat := source.get("serviceAccountToken")) is not None:
            request = {"spec": {"audiences": [sat["audience"]] if sat.get("audience") else None,
                                "expirationSeconds": sat.get("expirationSeconds", 3607),
                                "boundObjectRef": {"kind": "Pod", "apiVersion": "v1", "name": meta["name"], "uid": meta["uid"]}}}
            sa = pod.body["spec"].get("serviceAccountName") or "default"
            token = _json(self.core.create_namespaced_service_account_token(sa, ns, request, _preload_content=False))
            _write_items(folder, {sat["path"]: token["status"]["token"].encode()}, None)
        elif (ref := source.get("configMap")) is not None:
            cm = _json(self.core.read_namespaced_config_map(ref["name"], ns, _preload_content=False))
            _write_items(folder, {k: d.encode() for k, d in (cm.get("data") or {}).items()}, ref.get("items"))
        elif (ref := source.get("secret")) is not None:
            secret = _json(self.core.read_namespaced_secret(ref["name"], ns, _preload_content=False))
            _write_items(folder, {k: base64.b64decode(d) for k, d in (secret.get("data") or {}).items()}, ref.get("items"))
        elif (ref := source.get("downwardAPI")) is not None:
            for item in ref.get("items") or []:
                if "fieldRef" in item:
                    _write_items(folder, {item["path"]: self._field(pod, item["fieldRef"]["fieldPath"]).encode()}, None)

    def _field(self, pod: Pod, path: str) -> str:
        meta, spec = pod.body["metadata"], pod.body["spec"]
        if m := re.fullmatch(r"metadata\.(labels|annotations)\['(.+)'\]", path):
            return (meta.get(m.group(1)) or {}).get(m.group(2), "")
        return {
            "metadata.name": meta["name"], "metadata.namespace": meta["namespace"], "metadata.uid": meta["uid"],
            "spec.nodeName": pod.node, "spec.serviceAccountName": spec.get("serviceAccountName", "default"),
            "status.podIP": pod.ip, "status.podIPs": pod.ip, "status.hostIP": self.network.gateway, "status.hostIPs": self.network.gateway,
            "metadata.labels": "\n".join(f'{k}="{v}"' for k, v in (meta.get("labels") or {}).items()),
        }.get(path, "")

    def _env(self, pod: Pod, c: Container) -> dict[str, str]:
        ns = pod.key[0]
        env = {"PATH": sandbox.project_path(), "HOME": POD_HOME, "HOSTNAME": _hostname(pod.body),
               "KUBERNETES_SERVICE_HOST": "127.0.0.1", "KUBERNETES_SERVICE_PORT": str(self.api_port),
               "KUBERNETES_SERVICE_PORT_HTTPS": str(self.api_port),
               "PYTHONUNBUFFERED": "1", "LANG": "C.UTF-8"}
        (pod.dir / "home").mkdir(exist_ok=True)
        for source in c.spec.get("envFrom") or []:
            prefix = source.get("prefix", "")
            if ref := source.get("configMapRef"):
                data = (_json(self.core.read_namespaced_config_map(ref["name"], ns, _preload_content=False)).get("data") or {})
            else:
                ref = source["secretRef"]
                data = {k: base64.b64decode(v).decode() for k, v in (_json(self.core.read_namespaced_secret(ref["name"], ns, _preload_content=False)).get("data") or {}).items()}
            env.update({prefix + k: v for k, v in data.items()})
        for item in c.spec.get("env") or []:
            if "valueFrom" not in item:
                env[item["name"]] = _expand(item.get("value", ""), env)
                continue
            src = item["valueFrom"]
            if "fieldRef" in src:
                env[item["name"]] = self._field(pod, src["fieldRef"]["fieldPath"])
            elif "secretKeyRef" in src:
                ref = src["secretKeyRef"]
                data = _json(self.core.read_namespaced_secret(ref["name"], ns, _preload_content=False)).get("data") or {}
                env[item["name"]] = base64.b64decode(data[ref["key"]]).decode()
            elif "configMapKeyRef" in src:
                ref = src["configMapKeyRef"]
                env[item["name"]] = (_json(self.core.read_namespaced_config_map(ref["name"], ns, _preload_content=False)).get("data") or {})[ref["key"]]
            elif "resourceFieldRef" in src:
                ref = src["resourceFieldRef"]
                kind, _, res = ref["resource"].partition(".")
                env[item["name"]] = str((c.spec.get("resources") or {}).get(kind + "s", {}).get(res, "0"))
        return env

    def _start(self, pod: Pod, c: Container) -> None:
        if c.exit_code is not None:  # a restart: the last run becomes lastState
            c.last_state = {"terminated": self._terminated(pod, c)}
            c.restarts += 1
        env = self._env(pod, c)
        argv = [_expand(a, env) for a in (c.spec.get("command") or []) + (c.spec.get("args") or [])]
        if not c.spec.get("command"):
            # No image here to take an entrypoint from: the project's CLI is the image's.
            argv = ["shardwright", *argv]
        # A home of its own (what the image's user would have), mounted before the pod's volumes.
        mounts = [sandbox.Mount(pod.dir / "home", POD_HOME)]
        for m in c.spec.get("volumeMounts") or []:
            source = pod.volumes[m["name"]]
            if m.get("subPath"):
                source = source / m["subPath"]
            mounts.append(sandbox.Mount(source, m["mountPath"], bool(m.get("readOnly"))))
        launch = sandbox.Launch(
            argv=argv, env=env, netns=pod.netns, hostname=_hostname(pod.body), hosts_file=pod.dir / "hosts", mounts=tuple(mounts),
            termination_log=pod.dir / f"{c.name}.termination-log",
            termination_path=c.spec.get("terminationMessagePath") or "/dev/termination-log",
            workdir=c.spec.get("workingDir") or POD_HOME, log=pod.dir / f"{c.name}.log",
        )
        self._write_hosts(only=pod)
        (pod.dir / f"{c.name}.termination-log").write_text("")
        c.process = sandbox.start(launch)
        c.started_at, c.exit_code, c.signal, c.finished_at, c.ready = now(), None, None, None, False
        c.next_probe = time.monotonic() + ((c.spec.get("readinessProbe") or {}).get("initialDelaySeconds") or 0)

    # ------------------------------------------------------------------ probes and status

    def _probe(self, pod: Pod) -> None:
        for c in pod.containers:
            if c.init or not c.running:
                continue
            probe = c.spec.get("readinessProbe")
            if probe is None:
                c.ready = True
                continue
            if time.monotonic() < c.next_probe:
                continue
            c.next_probe = time.monotonic() + (probe.get("periodSeconds") or 10)
            c.ready = _check(probe, pod.ip, c.spec)

    def _terminated(self, pod: Pod, c: Container) -> dict[str, Any]:
        message = (pod.dir / f"{c.name}.termination-log").read_text(errors="replace")[:4096] if (pod.dir / f"{c.name}.termination-log").exists() else ""
        if not message and c.exit_code and c.spec.get("terminationMessagePolicy") == "FallbackToLogsOnError":
            tail = (pod.dir / f"{c.name}.log").read_bytes()[-2048:].decode(errors="replace").splitlines()[-80:]
            message = "\n".join(tail)
        out = {"exitCode": c.exit_code, "reason": "Completed" if c.exit_code == 0 else "Error",
               "startedAt": c.started_at, "finishedAt": c.finished_at, "containerID": f"process://{c.process.pid}"}
        if c.signal:
            out["signal"] = c.signal
        if message:
            out["message"] = message
        return out

    def _container_status(self, pod: Pod, c: Container) -> dict[str, Any]:
        image = c.spec.get("image", "")
        out = {"name": c.name, "image": image, "imageID": "", "ready": c.ready, "restartCount": c.restarts,
               "started": c.running}
        if c.process is None:
            reason = "CreateContainerConfigError" if pod.failed_start else "PodInitializing"
            out["state"] = {"waiting": {"reason": reason, **({"message": pod.failed_start} if pod.failed_start else {})}}
        elif c.running:
            out["state"] = {"running": {"startedAt": c.started_at}}
        elif self._restarts(pod, c) and self._phase(pod) == "Running":
            out["state"] = {"waiting": {"reason": "CrashLoopBackOff", "message": f"back-off restarting failed container {c.name}"}}
            out["lastState"] = {"terminated": self._terminated(pod, c)}
            out["containerID"] = f"process://{c.process.pid}"
            return out
            out["containerID"] = f"process://{c.process.pid}"
        else:
            out["state"] = {"terminated": self._terminated(pod, c)}
            out["containerID"] = f"process://{c.process.pid}"
        if c.last_state:
            out["lastState"] = c.last_state
        return out

    def _write_status(self, pod: Pod) -> None:
        phase = self._phase(pod)
        apps = [c for c in pod.containers if not c.init]
        inits_done = all(c.exit_code == 0 for c in pod.containers if c.init)
        ready = phase == "Running" and all(c.ready for c in apps)

        def cond(kind: str, ok: bool, reason: str = "") -> dict[str, Any]:
            old = next((x for x in (pod.written or {}).get("conditions", []) if x["type"] == kind), None)
            status = "True" if ok else "False"
            since = old["lastTransitionTime"] if old and old["status"] == status else now()
            return {"type": kind, "status": status, "lastTransitionTime": since, **({"reason": reason} if reason and not ok else {})}

        status = {
            "phase": phase, "podIP": pod.ip, "podIPs": [{"ip": pod.ip}], "hostIP": self.network.gateway, "hostIPs": [{"ip": self.network.gateway}],
            "startTime": pod.started_at,
            "conditions": [
                cond("PodReadyToStartContainers", True), cond("Initialized", inits_done, "ContainersNotInitialized"),
                cond("ContainersReady", ready, "ContainersNotReady"), cond("Ready", ready, "ContainersNotReady"),
                cond("PodScheduled", True),
            ],
            "containerStatuses": [self._container_status(pod, c) for c in apps],
        }
        if any(c.init for c in pod.containers):
            status["initContainerStatuses"] = [self._container_status(pod, c) for c in pod.containers if c.init]
        if status == pod.written:
            return
        try:
            self.core.patch_namespaced_pod_status(pod.key[1], pod.key[0], {"status": status}, _preload_content=False)
            pod.written = status
        except ApiException as e:
            if e.status == 404:
                self._gone(pod)
            else:
                log.warning(f"status of {pod.key}: HTTP {e.status}")
        except Exception as e:
            log.warning(f"status of {pod.key}: {e}")

    # ------------------------------------------------------------------ ending

    def _finalize_delete(self, pod: Pod) -> None:
        """Containers are gone: remove the object, as the kubelet does (grace 0, same uid)."""
        self._write_status(pod)
        try:
            self.core.delete_namespaced_pod(pod.key[1], pod.key[0], body=client.V1DeleteOptions(
                grace_period_seconds=0, preconditions=client.V1Preconditions(uid=pod.uid)), _preload_content=False)
        except ApiException as e:
            if e.status not in (404, 409):
                log.warning(f"delete {pod.key}: HTTP {e.status}")
                return
        self._gone(pod)

    def _gone(self, pod: Pod) -> None:
        for c in pod.containers:
            _signal(c, signal.SIGKILL)
            if c.process is not None:
                try:
                    c.process.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    pass
        self.network.remove(pod.netns)
        self.pods.pop(pod.uid, None)

    # ------------------------------------------------------------------ DNS

    def _remember_dns(self, body: dict[str, Any]) -> None:
        spec, meta = body.get("spec") or {}, body["metadata"]
        ip = (body.get("status") or {}).get("podIP")
        if not ip:
            return
        names = [_hostname(body)]
        if spec.get("subdomain"):
            fq = f"{_hostname(body)}.{spec['subdomain']}.{meta['namespace']}.svc"
            names = [f"{fq}.cluster.local", fq, *names]
        self.dns[ip] = names

    def _forget_dns(self, body: dict[str, Any]) -> None:
        ip = (body.get("status") or {}).get("podIP")
        if ip and not any(p.ip == ip for p in self.pods.values() if p.uid != body["metadata"]["uid"]):
            self.dns.pop(ip, None)

    def _write_hosts(self, only: Pod | None = None) -> None:
        """Every running pod's /etc/hosts, written in place (its bind mount sees the change)."""
        shared = "".join(f"{ip}\t{' '.join(names)}\n" for ip, names in sorted(self.dns.items()))
        for pod in [only] if only else list(self.pods.values()):
            text = f"127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost\n# pods of the cluster (node agent)\n{shared}"
            path = pod.dir / "hosts"
            if not path.exists() or path.read_text() != text:
                with open(path, "w") as f:  # same inode: the bind mount follows
                    f.write(text)


# ----------------------------------------------------------------------------- helpers


def _hostname(body: dict[str, Any]) -> str:
    return (body.get("spec") or {}).get("hostname") or body["metadata"]["name"][:63]


def _expand(text: str, env: dict[str, str]) -> str:
    """``$(VAR)`` as the kubelet expands it; ``$$(VAR)`` stays literal."""
    return re.sub(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)", lambda m: "$" if m.group(0) == "$$" else env.get(m.group(1), m.group(0)), text)


def _write_items(folder: Path, data: dict[str, bytes], items: list[dict[str, Any]] | None) -> None:
    chosen = {i["key"]: i["path"] for i in items} if items else {k: k for k in data}
    for key, rel in chosen.items():
        if key in data:
            path = folder / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data[key])


def _port(value: Any, spec: dict[str, Any]) -> int:
    if isinstance(value, int) or str(value).isdigit():
        return int(value)
    return next(p["containerPort"] for p in spec.get("ports") or [] if p.get("name") == value)


def _check(probe: dict[str, Any], ip: str, spec: dict[str, Any]) -> bool:
    timeout = probe.get("timeoutSeconds") or 1
    try:
        if (get := probe.get("httpGet")) is not None:
            scheme = (get.get("scheme") or "HTTP").lower()
            url = f"{scheme}://{ip}:{_port(get['port'], spec)}{get.get('path') or '/'}"
            import ssl

            with urllib.request.urlopen(url, timeout=timeout, context=ssl._create_unverified_context() if scheme == "https" else None) as r:
                return 200 <= r.status < 400
        if (tcp := probe.get("tcpSocket")) is not None:
            with socket.create_connection((ip, _port(tcp["port"], spec)), timeout=timeout):
                return True
    except Exception:
        return False
    return True  # exec probes are not run here: counted as passing (docs/testing.md)


def _signal(c: Container, sig: int) -> None:
    if c.running:
        try:
            os.killpg(c.process.pid, sig)
        except ProcessLookupError:
            pass


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="nodeagent", description=__doc__.split("\n\n")[0])
    p.add_argument("--kubeconfig", required=True)
    p.add_argument("--nodes", required=True, type=Path, help="a NodeList or Node YAML: names, labels, allocatable")
    p.add_argument("--state", required=True, type=Path)
    p.add_argument("--api-port", required=True, type=int)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    docs = [d for d in yaml.safe_load_all(args.nodes.read_text()) if d]
    nodes = [n for d in docs for n in (d.get("items") if d.get("kind") == "NodeList" else [d])]
    configuration = client.Configuration()
    kube_config.load_kube_config(config_file=args.kubeconfig, client_configuration=configuration)
    agent = NodeAgent(client.ApiClient(configuration), nodes, args.state, args.api_port)
    signal.signal(signal.SIGTERM, lambda *_: agent.stopping.set())
    signal.signal(signal.SIGINT, lambda *_: agent.stopping.set())
    agent.run()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
