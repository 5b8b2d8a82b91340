"""A real Kubernetes control plane on loopback, one object with ``start()`` and ``stop()``.

As envtest does, every component is a plain process with its flags visible (``argv``):
etcd, kube-apiserver (TLS, RBAC, admission webhooks, PodSecurity, service-account tokens),
kube-controller-manager and kube-scheduler, each on a free 127.0.0.1 port. The CRDs are
installed before the controller manager starts, so its garbage collector knows them from its
first discovery. Optional members: KWOK (simulated nodes for scheduling and scale) and the
process-backed node agent (nodeagent.py: nodes whose pods really run).

``state.json`` in the state folder names every process this object started (pid and
binary), so another process (``make cluster-down``) can stop exactly those and no other.
"""

from __future__ import annotations

import dataclasses
import json
import os
import secrets
import signal
import ssl
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path

from . import pki as pki_mod
from shardwright.operator.backends.ports import free_port

SERVICE_CIDR = "10.96.0.0/16"
SERVICE_IP = "10.96.0.1"
#: Requests of service accounts only (operators, controllers in pods): when answered, and
#: for watches also when they start (they end only when the watcher stops).
AUDIT_POLICY = """apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived]
rules:
  - level: Metadata
    userGroups: ["system:serviceaccounts"]
  - level: None
"""


@dataclasses.dataclass(frozen=True)
class Settings:
    """How the control plane starts; plain fields, as envtest's are."""

    #: The binaries (build.sh prints this folder).
    bin_dir: Path
    #: Certificates, etcd's data, logs, kubeconfig and state.json.
    state_dir: Path
    #: CustomResourceDefinition files applied before the controller manager starts.
    crds: tuple[Path, ...] = ()
    #: Seconds without a node heartbeat before the node lifecycle controller marks it
    #: NotReady (the controller manager's --node-monitor-grace-period; 40 s upstream).
    node_monitor_grace_s: int = 40
    #: Seconds each component may take to answer its health check.
    start_timeout_s: float = 90.0
    #: Components end with this process (tests); off for ``make cluster``, which outlives it.
    die_with_parent: bool = True


@dataclasses.dataclass
class Component:
    """One process of the control plane."""

    name: str
    argv: list[str]
    #: URL answering 200 once the component serves (https ones are checked with the CA);
    #: None: alive for a second is enough (it reports readiness its own way, e.g. Node objects).
    health: str | None
    cwd: Path | None = None
    process: subprocess.Popen | None = None
    pid: int | None = None


def _die_with_parent() -> None:
    """preexec: SIGKILL this child when the process that started it ends (prctl)."""
    import ctypes

    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


class ControlPlane:
    """etcd + kube-apiserver + kube-controller-manager + kube-scheduler on loopback."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.dir = settings.state_dir
        self.components: dict[str, Component] = {}
        self.token = ""
        self.api_port = 0
        self.pki: pki_mod.Pki | None = None

    # ------------------------------------------------------------------ public

    @property
    def kubeconfig(self) -> Path:
        return self.dir / "kubeconfig"

    @property
    def server(self) -> str:
        return f"https://127.0.0.1:{self.api_port}"

    @property
    def audit_log(self) -> Path:
        """The API server's audit log (JSON lines): every request a service account made,
        at Metadata level (who, verb, resource, response code), for the RBAC tests."""
        return self.dir / "logs" / "audit.log"

    def start(self) -> None:
        """Start every component in order, waiting for each to be healthy; on any failure
        everything started so far is stopped and the error names the component and its log."""
        s = self.settings
        missing = [b for b in ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubectl") if not (s.bin_dir / b).is_file()]
        if missing:
            raise RuntimeError(f"control plane binaries missing in {s.bin_dir}: {', '.join(missing)} (run e2e/cluster/build.sh)")
        (self.dir / "logs").mkdir(parents=True, exist_ok=True)
        self.pki = pki_mod.make_pki(self.dir / "pki", service_ip=SERVICE_IP)
        self.token = secrets.token_hex(16)
        (self.dir / "tokens.csv").write_text(f'{self.token},admin,admin,"system:masters"\n')
        (self.dir / "tokens.csv").chmod(0o600)
        self.api_port = free_port()
        self._write_kubeconfig()
        try:
            self._launch(self._etcd())
            self._launch(self._apiserver())
            self._install_crds()
            self._launch(self._controller_manager())
            self._launch(self._scheduler())
        except BaseException:
            self.stop()
            raise
        self._save_state()

    def stop(self) -> None:
        """SIGTERM every component (reverse order), SIGKILL what is left after 10 s."""
        for comp in reversed(list(self.components.values())):
            _end(comp.pid, comp.argv[0], comp.process)
        self.components.clear()
        (self.dir / "state.json").unlink(missing_ok=True)

    def restart(self, name: str) -> None:
        """Stop one component and start it again with the same flags (fault tests)."""
        comp = self.components[name]
        _end(comp.pid, comp.argv[0], comp.process)
        self._launch(Component(comp.name, comp.argv, comp.health, comp.cwd))
        self._save_state()

    def add(self, name: str, argv: Sequence[str], health: str | None, cwd: Path | None = None) -> Component:
        """Start another member (KWOK, the node agent) owned by this control plane."""
        comp = self._launch(Component(name, list(argv), health, cwd))
        self._save_state()
        return comp

    def kubectl(self, *args: str, input: str | None = None, timeout: float = 60, check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run([str(self.settings.bin_dir / "kubectl"), f"--kubeconfig={self.kubeconfig}", *args],
                              input=input, capture_output=True, text=True, timeout=timeout, check=check)

    # ------------------------------------------------------------------ components

    def _etcd(self) -> Component:
        client, peer = free_port(), free_port()
        return Component("etcd", [
            str(self.settings.bin_dir / "etcd"), "--name=shardwright", f"--data-dir={self.dir / 'etcd'}",
            f"--listen-client-urls=http://127.0.0.1:{client}", f"--advertise-client-urls=http://127.0.0.1:{client}",
            f"--listen-peer-urls=http://127.0.0.1:{peer}", f"--initial-advertise-peer-urls=http://127.0.0.1:{peer}",
            f"--initial-cluster=shardwright=http://127.0.0.1:{peer}", "--unsafe-no-fsync", "--log-level=warn",
        ], health=f"http://127.0.0.1:{client}/health")

    def _apiserver(self) -> Component:
        p, etcd = self.pki, self.components["etcd"]
        etcd_url = etcd.health.removesuffix("/health")
        policy = self.dir / "audit-policy.yaml"
        policy.write_text(AUDIT_POLICY)
        return Component("kube-apiserver", [
            str(self.settings.bin_dir / "kube-apiserver"), f"--etcd-servers={etcd_url}",
            "--bind-address=127.0.0.1", f"--secure-port={self.api_port}",
            # A host with no default route cannot pick an advertise address by itself.
            "--advertise-address=127.0.0.1", "--endpoint-reconciler-type=none",
            f"--tls-cert-file={p.serving_cert}", f"--tls-private-key-file={p.serving_key}",
            f"--client-ca-file={p.ca_cert}", f"--token-auth-file={self.dir / 'tokens.csv'}",
            "--authorization-mode=RBAC",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            f"--service-account-key-file={p.sa_pub}", f"--service-account-signing-key-file={p.sa_key}",
            f"--service-cluster-ip-range={SERVICE_CIDR}", "--allow-privileged=true",
            # Webhooks and aggregated APIs are dialled at their endpoints' pod IPs: no
            # kube-proxy turns a Service's cluster IP into a pod here.
            "--enable-aggregator-routing=true",
            "--enable-admission-plugins=NamespaceLifecycle,ServiceAccount,PodSecurity,Priority,DefaultTolerationSeconds,"
            "MutatingAdmissionWebhook,ValidatingAdmissionWebhook,ValidatingAdmissionPolicy,ResourceQuota,NodeRestriction,"
            "OwnerReferencesPermissionEnforcement",
            f"--audit-policy-file={policy}", f"--audit-log-path={self.audit_log}", "--audit-log-format=json",
            "--audit-log-maxsize=200", "--audit-log-mode=blocking",
            "--profiling=false", "--v=1",
        ], health=f"{self.server}/readyz")

    def _controller_manager(self) -> Component:
        p, port = self.pki, free_port()
        return Component("kube-controller-manager", [
            str(self.settings.bin_dir / "kube-controller-manager"), f"--kubeconfig={self.kubeconfig}",
            "--leader-elect=false", f"--root-ca-file={p.ca_cert}", f"--service-account-private-key-file={p.sa_key}",
            f"--cluster-signing-cert-file={p.ca_cert}", f"--cluster-signing-key-file={p.ca_key}",
            "--controllers=*", "--use-service-account-credentials=false",
            f"--node-monitor-grace-period={self.settings.node_monitor_grace_s}s",
            "--bind-address=127.0.0.1", f"--secure-port={port}", "--v=1",
        ], health=f"https://127.0.0.1:{port}/healthz")

    def _scheduler(self) -> Component:
        port = free_port()
        config = self.dir / "scheduler.yaml"
        config.write_text(json.dumps({
            "apiVersion": "kubescheduler.config.k8s.io/v1", "kind": "KubeSchedulerConfiguration",
            "clientConnection": {"kubeconfig": str(self.kubeconfig)}, "leaderElection": {"leaderElect": False},
        }))
        return Component("kube-scheduler", [
            str(self.settings.bin_dir / "kube-scheduler"), f"--config={config}",
            "--bind-address=127.0.0.1", f"--secure-port={port}", "--v=1",
        ], health=f"https://127.0.0.1:{port}/healthz")

    # ------------------------------------------------------------------ helpers

    def _launch(self, comp: Component) -> Component:
        log = open(self.dir / "logs" / f"{comp.name}.log", "ab")
        # PR_SET_PDEATHSIG fires when the *thread* that started the child ends: only a child of
        # the main thread can safely die with its parent (a worker thread's would die with it).
        tie = self.settings.die_with_parent and threading.current_thread() is threading.main_thread()
        comp.process = subprocess.Popen(
            comp.argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True, cwd=comp.cwd,
            preexec_fn=_die_with_parent if tie else None,
        )
        log.close()
        comp.pid = comp.process.pid
        self.components[comp.name] = comp
        self._wait_healthy(comp)
        return comp

    def _wait_healthy(self, comp: Component) -> None:
        if comp.health is None:
            time.sleep(1.0)
            if comp.process.poll() is not None:
                raise RuntimeError(f"{comp.name} exited with code {comp.process.returncode}; see {self.dir / 'logs' / (comp.name + '.log')}")
            return
        deadline = time.monotonic() + self.settings.start_timeout_s
        last = ""
        while time.monotonic() < deadline:
            if comp.process is not None and comp.process.poll() is not None:
                raise RuntimeError(f"{comp.name} exited with code {comp.process.returncode}; see {self.dir / 'logs' / (comp.name + '.log')}")
            try:
                if self.get(comp.health, timeout=2) is not None:
                    return
            except OSError as e:
                last = str(e)
            time.sleep(0.2)
        raise RuntimeError(f"{comp.name} not healthy at {comp.health} within {self.settings.start_timeout_s:.0f} s ({last}); "
                           f"see {self.dir / 'logs' / (comp.name + '.log')}")

    def get(self, url: str, *, timeout: float = 5) -> bytes | None:
        """GET with the admin token; None unless 200. Components' own certificates are
        self-signed, so only the API server's is verified (against our CA)."""
        ctx = None
        if url.startswith("https://"):
            ctx = ssl.create_default_context(cafile=str(self.pki.ca_cert)) if url.startswith(self.server) else ssl._create_unverified_context()
        req = urllib.request.Request(url, headers={"Authorization": f"Bearer {self.token}"})
        try:
            with urllib.request.urlopen(req, timeout=timeout, context=ctx) as r:
                return r.read() if r.status == 200 else None
        except urllib.error.HTTPError:
            return None

    def _install_crds(self) -> None:
        if not self.settings.crds:
            return
        args = ["apply", "--server-side", "--force-conflicts"]
        for path in self.settings.crds:
            args += ["-f", str(path)]
        self.kubectl(*args)
        names = [f"crd/{Path(p).name.removesuffix('.yaml')}" for p in self.settings.crds]
        self.kubectl("wait", "--for=condition=Established", "--timeout=60s", *names, timeout=90)

    def _write_kubeconfig(self) -> None:
        import base64

        ca = base64.b64encode(self.pki.ca_cert.read_bytes()).decode()
        self.kubeconfig.write_text(json.dumps({
            "apiVersion": "v1", "kind": "Config", "current-context": "shardwright-local",
            "clusters": [{"name": "shardwright-local", "cluster": {"server": self.server, "certificate-authority-data": ca}}],
            "users": [{"name": "admin", "user": {"token": self.token}}],
            "contexts": [{"name": "shardwright-local", "context": {"cluster": "shardwright-local", "user": "admin"}}],
        }, indent=1))
        self.kubeconfig.chmod(0o600)

    def _save_state(self) -> None:
        state = {"server": self.server, "kubeconfig": str(self.kubeconfig),
                 "components": [{"name": c.name, "pid": c.pid, "binary": c.argv[0]} for c in self.components.values()]}
        (self.dir / "state.json").write_text(json.dumps(state, indent=1))


def _alive(pid: int | None, binary: str) -> bool:
    """The process ``pid`` runs and is ours: its command line starts with ``binary``."""
    if pid is None:
        return False
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return bool(cmdline) and binary.encode() in cmdline[0:2]


def _end(pid: int | None, binary: str, process: subprocess.Popen | None = None, grace: float = 10.0) -> None:
    """End the process group ``pid`` leads, if it still runs ``binary``."""
    if not _alive(pid, binary):
        if process is not None:
            process.poll()
        return
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            return
        if process is None and not _alive(pid, binary):
            return
        time.sleep(0.1)
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    if process is not None:
        process.wait(timeout=10)


def stop_recorded(state_dir: Path) -> list[str]:
    """Stop the processes a ``state.json`` names (``make cluster-down``); returns their names."""
    path = state_dir / "state.json"
    if not path.exists():
        return []
    state = json.loads(path.read_text())
    stopped = []
    for comp in reversed(state["components"]):
        if _alive(comp["pid"], comp["binary"]):
            _end(comp["pid"], comp["binary"])
            stopped.append(comp["name"])
    path.unlink(missing_ok=True)
    return stopped


def running(state_dir: Path) -> bool:
    """A control plane recorded in ``state_dir`` still runs (every process alive)."""
    path = state_dir / "state.json"
    if not path.exists():
        return False
    state = json.loads(path.read_text())
    return all(_alive(c["pid"], c["binary"]) for c in state["components"])


if __name__ == "__main__":  # pragma: no cover - use ``python -m e2e.cluster``
    sys.exit("use: python -m e2e.cluster up|down")
