"""A node agent for process-backed nodes: Nodes whose pods really run, as local processes.

It does for its nodes what a kubelet does, on one machine and without a container runtime:
registers each Node with its GPU capacity and labels, keeps its Lease fresh, and runs every
pod the scheduler binds to it (init containers, then containers; restartPolicy honoured)
in a network namespace of its own (podnet.py) with its volumes, env (podspec.py) and the
cluster's pod DNS names in /etc/hosts (sandbox.py says how a container starts); it writes
phase, conditions and containerStatuses with real exit codes (podstate.py). A deleted pod
gets SIGTERM, then SIGKILL after its grace period, and is then removed from the API, as a
kubelet does. Ingress NetworkPolicies are enforced in each pod's namespace, as a CNI with
policy support does (netpolicy.py). Liveness and startup probes are not run; resources are
not enforced.

    python -m e2e.cluster.nodeagent --kubeconfig K --nodes NODES.yaml --state DIR
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import os
import queue
import signal
import threading
import time
from pathlib import Path
from typing import Any

from kubernetes import client, config as kube_config
from kubernetes.client.exceptions import ApiException

from . import netpolicy, podnet, podspec, podstate, sandbox
from .podspec import read_json
from .podstate import Container, Pod, now
from .session import read_nodes

log = logging.getLogger("nodeagent")
KUBELET_VERSION = "v1.37.2"
#: Seconds between Lease renewals (the kubelet's default is a quarter of 40 s).
LEASE_RENEW_S = 10.0
LEASE_DURATION_S = 40
#: Seconds between reads of NetworkPolicies and namespaces (a policy applies within about this).
POLICY_POLL_S = 1.0


def micro_now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


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
        self.resolve = podspec.Resolver(self.core, state, api_port, self.network.gateway)
        self.policy = netpolicy.Enforcer((self.network.gateway,))
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
                    listed = read_json(self.core.list_pod_for_all_namespaces(_preload_content=False, _request_timeout=30))
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

    def poll_policies(self, last: tuple) -> None:
        """NetworkPolicies and namespace labels into the event queue when they change from
        ``last`` (what was read before)."""
        while not self.stopping.wait(POLICY_POLL_S):
            try:
                seen = netpolicy.read(self.api)
            except Exception as e:  # the API server may be restarting
                log.warning(f"network policies: {e}")
                continue
            if seen != last:
                self.events.put(("POLICIES", seen))
                last = seen

    # ------------------------------------------------------------------ the loop

    def run(self) -> None:
        self.register()
        policies = netpolicy.read(self.api)
        self.policy.observe_cluster(*policies)  # known before the first pod starts
        threading.Thread(target=self.heartbeat, daemon=True, name="heartbeat").start()
        threading.Thread(target=self.watch, daemon=True, name="watch").start()
        threading.Thread(target=self.poll_policies, args=(policies,), daemon=True, name="policies").start()
        while not self.stopping.is_set():
            try:
                kind, obj = self.events.get(timeout=0.2)
                self._event(kind, obj)
                while True:
                    kind, obj = self.events.get_nowait()
                    self._event(kind, obj)
            except queue.Empty:
                pass
            self.policy.sync(self.pods.values())  # before a new pod's containers start
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
        if kind == "POLICIES":
            self.policy.observe_cluster(*obj)
            return
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
        self.policy.observe_pods(kind, obj)
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
                    podstate.kill(c, signal.SIGTERM if grace > 0 else signal.SIGKILL)

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
                    podstate.kill(c, signal.SIGKILL)
                self._reap(pod)
                self._finalize_delete(pod)
            return
        if pod.volumes is None and time.monotonic() >= pod.retry_at:
            try:
                pod.volumes = self.resolve.volumes(pod)
                pod.failed_start = None
            except Exception as e:  # a missing secret, configMap or unbound claim: the kubelet retries too
                pod.failed_start = f"{type(e).__name__}: {e}"
                pod.retry_at = time.monotonic() + 2.0
        self._reap(pod)
        if podstate.phase(pod) in ("Pending", "Running") and pod.volumes is not None:
            for c in pod.stage():
                if c.process is None or (c.exit_code is not None and podstate.restarts(pod, c) and time.monotonic() >= c.not_before):
                    self._start(pod, c)
            podstate.probe(pod)
        self._write_status(pod)

    def _reap(self, pod: Pod) -> None:
        for c in podstate.reap(pod):
            log.info(f"pod {pod.key} container {c.name} exited {c.exit_code}")

    # ------------------------------------------------------------------ starting

    def _start(self, pod: Pod, c: Container) -> None:
        if c.exit_code is not None:  # a restart: the last run becomes lastState
            c.last_state = {"terminated": podstate.terminated(pod, c)}
            c.restarts += 1
        env = self.resolve.env(pod, c)
        argv = [podspec.expand(a, env) for a in (c.spec.get("command") or []) + (c.spec.get("args") or [])]
        if not c.spec.get("command"):
            # No image here to take an entrypoint from: the project's CLI is the image's.
            argv = ["shardwright", *argv]
        # A home of its own (what the image's user would have), mounted before the pod's volumes.
        mounts = [sandbox.Mount(pod.dir / "home", podspec.POD_HOME)]
        for m in c.spec.get("volumeMounts") or []:
            source = pod.volumes[m["name"]]
            if m.get("subPath"):
                source = source / m["subPath"]
            mounts.append(sandbox.Mount(source, m["mountPath"], bool(m.get("readOnly"))))
        launch = sandbox.Launch(
            argv=argv, env=env, netns=pod.netns, hostname=podspec.hostname(pod.body), hosts_file=pod.dir / "hosts", mounts=tuple(mounts),
            termination_log=pod.dir / f"{c.name}.termination-log",
            termination_path=c.spec.get("terminationMessagePath") or "/dev/termination-log",
            workdir=c.spec.get("workingDir") or podspec.POD_HOME, log=pod.dir / f"{c.name}.log",
        )
        self._write_hosts(only=pod)
        (pod.dir / f"{c.name}.termination-log").write_text("")
        c.process = sandbox.start(launch)
        c.started_at, c.exit_code, c.signal, c.finished_at, c.ready = now(), None, None, None, False
        c.next_probe = time.monotonic() + ((c.spec.get("readinessProbe") or {}).get("initialDelaySeconds") or 0)

    def _write_status(self, pod: Pod) -> None:
        status = podstate.pod_status(pod, self.network.gateway)
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
        podstate.end(pod)
        self.network.remove(pod.netns)
        self.pods.pop(pod.uid, None)

    # ------------------------------------------------------------------ DNS

    def _remember_dns(self, body: dict[str, Any]) -> None:
        spec, meta = body.get("spec") or {}, body["metadata"]
        ip = (body.get("status") or {}).get("podIP")
        if not ip:
            return
        names = [podspec.hostname(body)]
        if spec.get("subdomain"):
            fq = f"{podspec.hostname(body)}.{spec['subdomain']}.{meta['namespace']}.svc"
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


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="nodeagent", description=__doc__.split("\n\n")[0])
    p.add_argument("--kubeconfig", required=True)
    p.add_argument("--nodes", required=True, type=Path, help="a NodeList or Node YAML: names, labels, allocatable")
    p.add_argument("--state", required=True, type=Path)
    p.add_argument("--api-port", required=True, type=int)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    nodes = read_nodes(args.nodes)
    configuration = client.Configuration()
    kube_config.load_kube_config(config_file=args.kubeconfig, client_configuration=configuration)
    agent = NodeAgent(client.ApiClient(configuration), nodes, args.state, args.api_port)
    signal.signal(signal.SIGTERM, lambda *_: agent.stopping.set())
    signal.signal(signal.SIGINT, lambda *_: agent.stopping.set())
    agent.run()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
