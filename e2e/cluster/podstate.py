"""What a process-backed node knows of a pod it runs, and the status it reports for it.

Pure bookkeeping, as the kubelet's status manager: containers' processes and exit codes in,
phase, conditions and containerStatuses out (the shape the API server stores); readiness
probes (httpGet, tcpSocket) run here too.
"""

from __future__ import annotations

import dataclasses
import datetime
import os
import signal
import socket
import ssl
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any


def now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


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


def restarts(pod: Pod, c: Container) -> bool:
    """Whether ``c``, now exited, runs again under the pod's restartPolicy."""
    if pod.policy == "Always" and not c.init:
        return True
    return pod.policy in ("Always", "OnFailure") and c.exit_code != 0


def phase(pod: Pod) -> str:
    apps = [c for c in pod.containers if not c.init]
    inits_done = all(c.exit_code == 0 for c in pod.containers if c.init)
    if pod.policy == "Never" and any(c.exit_code not in (None, 0) for c in pod.containers):
        return "Failed"
    if inits_done and all(c.exit_code is not None for c in apps) and pod.policy != "Always":
        return "Succeeded" if all(c.exit_code == 0 for c in apps) else ("Failed" if pod.policy == "Never" else "Running")
    if inits_done and any(c.process is not None for c in apps):
        return "Running"
    return "Pending"


def reap(pod: Pod) -> list[Container]:
    """Record the exits of ``pod``'s containers; returns those that exited now."""
    ended = []
    for c in pod.containers:
        if c.running and (code := c.process.poll()) is not None:
            c.exit_code, c.signal = (128 - code, -code) if code < 0 else (code, None)
            c.finished_at, c.ready = now(), False
            c.not_before = time.monotonic() + min(10.0 * 2 ** c.restarts, 300.0)
            ended.append(c)
    return ended


def kill(c: Container, sig: int) -> None:
    """Signal the container's process group, if it still runs."""
    if c.running:
        try:
            os.killpg(c.process.pid, sig)
        except ProcessLookupError:
            pass


def end(pod: Pod) -> None:
    """SIGKILL every container of ``pod`` and wait for it (briefly)."""
    for c in pod.containers:
        kill(c, signal.SIGKILL)
        if c.process is not None:
            try:
                c.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass


def probe(pod: Pod) -> None:
    """Readiness of each running container: its readinessProbe when due, else started = ready."""
    for c in pod.containers:
        if c.init or not c.running:
            continue
        spec = c.spec.get("readinessProbe")
        if spec is None:
            c.ready = True
            continue
        if time.monotonic() < c.next_probe:
            continue
        c.next_probe = time.monotonic() + (spec.get("periodSeconds") or 10)
        c.ready = _check(spec, pod.ip, c.spec)


def terminated(pod: Pod, c: Container) -> dict[str, Any]:
    """The ``state.terminated`` of an exited container, with its termination message."""
    message_file = pod.dir / f"{c.name}.termination-log"
    message = message_file.read_text(errors="replace")[:4096] if message_file.exists() else ""
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


def container_status(pod: Pod, c: Container) -> dict[str, Any]:
    out: dict[str, Any] = {"name": c.name, "image": c.spec.get("image", ""), "imageID": "", "ready": c.ready,
                           "restartCount": c.restarts, "started": c.running}
    if c.process is not None:
        out["containerID"] = f"process://{c.process.pid}"
    if c.process is None:
        reason = "CreateContainerConfigError" if pod.failed_start else "PodInitializing"
        out["state"] = {"waiting": {"reason": reason, **({"message": pod.failed_start} if pod.failed_start else {})}}
    elif c.running:
        out["state"] = {"running": {"startedAt": c.started_at}}
    elif restarts(pod, c) and phase(pod) == "Running":
        out["state"] = {"waiting": {"reason": "CrashLoopBackOff", "message": f"back-off restarting failed container {c.name}"}}
        out["lastState"] = {"terminated": terminated(pod, c)}
        return out
    else:
        out["state"] = {"terminated": terminated(pod, c)}
    if c.last_state:
        out["lastState"] = c.last_state
    return out


def pod_status(pod: Pod, host_ip: str) -> dict[str, Any]:
    """The pod's whole ``status``; transition times kept from what was written before."""
    current = phase(pod)
    apps = [c for c in pod.containers if not c.init]
    inits_done = all(c.exit_code == 0 for c in pod.containers if c.init)
    ready = current == "Running" and all(c.ready for c in apps)

    def cond(kind: str, ok: bool, reason: str = "") -> dict[str, Any]:
        old = next((x for x in (pod.written or {}).get("conditions", []) if x["type"] == kind), None)
        status = "True" if ok else "False"
        since = old["lastTransitionTime"] if old and old["status"] == status else now()
        return {"type": kind, "status": status, "lastTransitionTime": since, **({"reason": reason} if reason and not ok else {})}

    status = {
        "phase": current, "podIP": pod.ip, "podIPs": [{"ip": pod.ip}], "hostIP": host_ip, "hostIPs": [{"ip": host_ip}],
        "startTime": pod.started_at,
        "conditions": [
            cond("PodReadyToStartContainers", True), cond("Initialized", inits_done, "ContainersNotInitialized"),
            cond("ContainersReady", ready, "ContainersNotReady"), cond("Ready", ready, "ContainersNotReady"),
            cond("PodScheduled", True),
        ],
        "containerStatuses": [container_status(pod, c) for c in apps],
    }
    if any(c.init for c in pod.containers):
        status["initContainerStatuses"] = [container_status(pod, c) for c in pod.containers if c.init]
    return status


def _port(value: Any, spec: dict[str, Any]) -> int:
    if isinstance(value, int) or str(value).isdigit():
        return int(value)
    return next(p["containerPort"] for p in spec.get("ports") or [] if p.get("name") == value)


def _check(spec: dict[str, Any], ip: str, container: dict[str, Any]) -> bool:
    timeout = spec.get("timeoutSeconds") or 1
    try:
        if (get := spec.get("httpGet")) is not None:
            scheme = (get.get("scheme") or "HTTP").lower()
            url = f"{scheme}://{ip}:{_port(get['port'], container)}{get.get('path') or '/'}"
            context = ssl._create_unverified_context() if scheme == "https" else None
            with urllib.request.urlopen(url, timeout=timeout, context=context) as r:
                return 200 <= r.status < 400
        if (tcp := spec.get("tcpSocket")) is not None:
            with socket.create_connection((ip, _port(tcp["port"], container)), timeout=timeout):
                return True
    except Exception:
        return False
    return True  # exec probes are not run here: counted as passing (docs/testing.md)
