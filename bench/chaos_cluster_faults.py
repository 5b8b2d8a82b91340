"""The cluster faults, each struck once at the moment the harness chooses. Each returns a
``Strike``: what it hit, whether it took, and the (job, generation) pairs it must cost one
restart each. Processes are found by their pod: a container's main process leads its own
process group, with the pod's HOSTNAME and this API server's port in its environment."""

from __future__ import annotations

import dataclasses
import json
import os
import random
import re
import signal
import threading
import time
from pathlib import Path

from e2e.cluster import audit

from bench.chaos_cluster_env import GEN_LABEL, JOB_LABEL, NS, OPERATOR_SA, SYSTEM, Cluster, PodRecorder, wait


@dataclasses.dataclass
class Strike:
    kind: str
    target: str = ""
    struck: bool = False
    detail: str = ""
    #: (job, generation) pairs this fault must end with one restart each.
    restarts: list[tuple[str, int]] = dataclasses.field(default_factory=list)
    #: (job, generation) pairs ended by a disruption (evicted pods): a new generation, no restart spent.
    disrupted: list[tuple[str, int]] = dataclasses.field(default_factory=list)
    #: (job, checkpoint step) damaged: the restart must reject it.
    damaged: list[tuple[str, int]] = dataclasses.field(default_factory=list)
    #: (job, generation) struck with a pod on a node lost now or moments ago: the operator,
    #: whose view of the nodes lags a little, may count the end a failure or a disruption.
    either: list[tuple[str, int]] = dataclasses.field(default_factory=list)


#: How long after a node is back the operator may still see it NotReady (its node list
#: lags the API by a pass or two). Seed 1401 force-deleted a pod on a node the harness had
#: just seen back, and the operator, still seeing the node NotReady, counted a disruption.
NODE_VIEW_LAG_S = 30.0


class Faults:
    """Strikes faults; a hang and a lost node play out in the background (a minute each)
    while others strike, their jobs kept out of reach until they end (``busy``)."""

    def __init__(self, cluster: Cluster, recorder: PodRecorder, steps: int) -> None:
        self.cluster, self.recorder, self.steps = cluster, recorder, steps
        self.busy: set[str] = set()
        self.node_down = threading.Event()
        self.pending: list[threading.Thread] = []
        #: Checkpoint folders this harness damaged.
        self.damaged: set[Path] = set()
        #: Nodes being lost now, and when each last came back.
        self.lost: set[str] = set()
        self.back: dict[str, float] = {}

    def strike(self, kind: str, pick: int) -> Strike:
        return getattr(self, kind.replace("-", "_"))(Strike(kind), random.Random(pick))

    def ready(self, kind: str) -> bool:
        """Whether ``kind`` has something to strike now."""
        if kind in ("apiserver-restart", "etcd-restart"):
            return True
        if kind == "operator-killed":
            return sum(p["status"].get("phase") == "Running" and not p["metadata"].get("deletionTimestamp")
                       for p in self.cluster.pods(ns=SYSTEM)) >= 2 and self.leader() is not None
        if kind == "node-lost" and (self.node_down.is_set() or not all(self.cluster.nodes_ready().values())):
            return False
        return bool(self.running())

    def any_left(self) -> bool:
        """Some job has not yet passed the point after which no fault strikes it."""
        return any((j.get("status") or {}).get("phase") not in ("Complete", "Failed")
                   and (j.get("status") or {}).get("step", 0) <= self.steps * 0.8 for j in self.cluster.jobs().values())

    def background(self, work) -> None:
        thread = threading.Thread(target=work, daemon=True)
        thread.start()
        self.pending.append(thread)

    def join(self, timeout: float = 400) -> None:
        for thread in self.pending:
            thread.join(timeout)

    # ------------------------------------------------------------------ targets

    def running(self) -> list[tuple[str, int, list[dict]]]:
        """Jobs Running well before their last step, with their current generation's pods, all Running."""
        out = []
        for name, job in sorted(self.cluster.jobs().items()):
            st = job.get("status") or {}
            if name in self.busy or st.get("phase") != "Running" or st.get("step", 0) > self.steps * 0.8:
                continue
            gen = st.get("generation", 0)
            pods = [p for p in self.cluster.pods("-l", f"{JOB_LABEL}={name},{GEN_LABEL}={gen}")
                    if p["status"].get("phase") == "Running" and not p["metadata"].get("deletionTimestamp")]
            if pods and len(pods) == job["spec"]["workers"][0]["replicas"]:
                out.append((name, gen, sorted(pods, key=lambda p: p["metadata"]["name"])))
        return out

    def _rank(self, s: Strike, rng: random.Random) -> tuple[str, int, dict] | None:
        jobs = self.running()
        if not jobs:
            s.detail = "no job running"
            return None
        name, gen, pods = rng.choice(jobs)
        pod = rng.choice(pods)
        s.target = pod["metadata"]["name"]
        nodes = {p["spec"].get("nodeName") for p in pods}
        if nodes & self.lost or any(time.monotonic() - self.back.get(n, -NODE_VIEW_LAG_S) < NODE_VIEW_LAG_S for n in nodes):
            s.either = [(name, gen)]
        return name, gen, pod

    def group(self, pod: dict) -> int | None:
        """The process group of the pod's container (its main process's pid)."""
        want = {f"HOSTNAME={pod['spec'].get('hostname') or pod['metadata']['name'][:63]}", f"KUBERNETES_SERVICE_PORT={self.cluster.cp.api_port}"}
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                env = set((entry / "environ").read_bytes().decode(errors="replace").split("\0"))
                if want <= env and os.getpgid(int(entry.name)) == int(entry.name):
                    return int(entry.name)
            except (OSError, ProcessLookupError):
                continue
        return None

    # ------------------------------------------------------------------ rank faults

    def pod_delete(self, s: Strike, rng: random.Random) -> Strike:
        if (hit := self._rank(s, rng)) is None:
            return s
        name, gen, pod = hit
        out = self.cluster.kubectl("-n", NS, "delete", "pod", s.target, "--grace-period=0", "--force", check=False)
        s.struck = out.returncode == 0
        s.restarts = [(name, gen)] if s.struck else []
        return s

    def _process(self, s: Strike, rng: random.Random) -> tuple[str, int, int] | None:
        """A rank of a running job: (job, generation, its container's process group)."""
        if (hit := self._rank(s, rng)) is None:
            return None
        name, gen, pod = hit
        if (pgid := self.group(pod)) is None:
            s.detail = "process not found"
            return None
        return name, gen, pgid

    def kill(self, s: Strike, rng: random.Random) -> Strike:
        if (hit := self._process(s, rng)) is None:
            return s
        name, gen, pgid = hit
        os.killpg(pgid, signal.SIGKILL)
        s.struck, s.restarts = True, [(name, gen)]
        return s

    def hang(self, s: Strike, rng: random.Random) -> Strike:
        """SIGSTOP a rank of a generation that has reported steps (the progress deadline
        counts from the first report): the deadline must end the generation. Once its pod
        is being deleted it is killed (a stopped process cannot take SIGTERM)."""
        if (hit := self._process(s, rng)) is None:
            return s
        name, gen, pgid = hit
        pod = s.target
        if not self.reporting(name, gen):
            s.detail = "its generation reported no step"
            return s
        before = self.deadline_events(name)
        os.killpg(pgid, signal.SIGSTOP)
        self.busy.add(name)
        s.detail = "stopped"

        def until_ended() -> None:
            try:
                # Stopped, it would sit out its pod's grace period: killed once the pod is being deleted.
                wait(lambda: self.deadline_events(name) > before or not self.alive(pod), 240, f"{name}'s rank pod deleted")
                os.killpg(pgid, signal.SIGKILL)
                wait(lambda: (job := self.cluster.jobs().get(name)) is None or (job.get("status") or {}).get("generation", 0) > gen
                     or (job.get("status") or {}).get("phase") in ("Complete", "Failed"), 300, f"{name}'s generation {gen} ended")
                s.restarts = [(name, gen)]
                # Ended by the deadline, or first by its peer's collective timing out: a
                # failure either way, which the job's budget pays for.
                s.struck = ((self.cluster.jobs().get(name) or {}).get("status") or {}).get("generation", 0) > gen
                deadline = self.deadline_events(name) > before
                s.detail = ("progress deadline exceeded" if deadline else "a peer failed first (its collective timed out)") if s.struck else "generation not ended"
            except TimeoutError as e:
                s.detail = str(e)
            finally:
                try:
                    os.killpg(pgid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self.busy.discard(name)

        self.background(until_ended)
        return s

    def alive(self, pod: str) -> bool:
        """The pod exists and is not being deleted (or the API cannot tell now)."""
        pods = self.cluster.pods()
        return not pods or any(p["metadata"]["name"] == pod and not p["metadata"].get("deletionTimestamp") for p in pods)

    def reporting(self, job: str, gen: int, within: float = 30) -> bool:
        """The job's step advances in generation ``gen`` (its ranks report)."""
        first = (self.cluster.jobs().get(job, {}).get("status") or {}).get("step")
        try:
            return bool(wait(lambda: (st := self.cluster.jobs().get(job, {}).get("status") or {}).get("generation") == gen
                             and st.get("step") != first, within, f"{job} reporting", every=2.0))
        except TimeoutError:
            return False

    def deadline_events(self, job: str) -> int:
        out = self.cluster.kubectl("-n", NS, "get", "events", f"--field-selector=involvedObject.name={job},reason=ProgressDeadlineExceeded",
                                   "-o", "json", check=False, timeout=20)
        return sum(e.get("count") or 1 for e in json.loads(out.stdout)["items"]) if out.returncode == 0 else 0

    def corrupt_checkpoint(self, s: Strike, rng: random.Random) -> Strike:
        """Damage the job's newest committed checkpoint, then kill its rank 0 at once: the
        restart must reject it and resume from the one before."""
        from shardwright.workers.checkpoint import damage

        if (hit := self._rank(s, rng)) is None:
            return s
        name, gen, _ = hit
        pod = self.running_pod(name, gen, 0)
        # A rejected checkpoint is moved aside as step-N.corrupt: not a candidate.
        committed = sorted((p for p in self.cluster.storage.glob(f"**/{name}/**/step-*/manifest.json") if re.fullmatch(r"step-\d+", p.parent.name)),
                           key=lambda p: int(p.parent.name[5:]))
        if pod is None or not committed or (pgid := self.group(pod)) is None:
            s.detail = "no committed checkpoint or rank 0 not found"
            return s
        if committed[-1].parent in self.damaged:
            # Damaging it again would flip the same bytes back (seed 1401 did, twice).
            s.detail = "its newest checkpoint is damaged already, not yet loaded"
            return s
        step = int(committed[-1].parent.name[5:])
        damage({"path": str(committed[-1].parent)})
        self.damaged.add(committed[-1].parent)
        os.killpg(pgid, signal.SIGKILL)
        s.target, s.struck = f"{name} step {step}", True
        s.restarts, s.damaged = [(name, gen)], [(name, step)]
        return s

    def running_pod(self, job: str, gen: int, rank: int) -> dict | None:
        return next((p for p in self.cluster.pods("-l", f"{JOB_LABEL}={job},{GEN_LABEL}={gen}")
                     if p["metadata"]["name"].endswith(f"-{rank}")), None)

    # ------------------------------------------------------------------ node, operator, control plane

    def node_lost(self, s: Strike, rng: random.Random) -> Strike:
        """Stop a node's heartbeat until it is NotReady and its rank pods are evicted (a
        disruption: the jobs go on in a new generation without spending a restart); then resume."""
        jobs = self.running()
        nodes = sorted({p["spec"]["nodeName"] for _, _, pods in jobs for p in pods})
        if not nodes:
            s.detail = "no job running"
            return s
        s.target = node = rng.choice(nodes)
        hit = [(name, gen, p["metadata"]["name"]) for name, gen, pods in jobs for p in pods if p["spec"]["nodeName"] == node]
        self.node_down.set()
        self.lost.add(node)
        self.busy.update(name for name, _, _ in hit)
        self.cluster.paused_file.write_text(node + "\n")
        began = time.monotonic()

        def until_evicted() -> None:
            try:
                wait(lambda: self.cluster.nodes_ready().get(node) is False, 90, f"{node} NotReady")
                wait(lambda: all(pod in self.recorder.ended for _, _, pod in hit), 90, f"{node}'s rank pods evicted")
                s.struck, s.detail = True, "NotReady, its rank pods evicted"
            except TimeoutError as e:
                s.detail = str(e)
            finally:
                self.cluster.paused_file.write_text("")
                try:
                    wait(lambda: self.cluster.nodes_ready().get(node), 90, f"{node} Ready again")
                    # Until its taints are gone a pod placed there (a next generation) is
                    # evicted too: every generation whose pod there ended counts (seed 1101).
                    wait(lambda: not self.cluster.tainted(node), 90, f"{node} untainted")
                    time.sleep(3)  # the watch's last deletions
                finally:
                    s.disrupted = self.recorder.ended_on(node, began, time.monotonic())
                    self.lost.discard(node)
                    self.back[node] = time.monotonic()
                    self.busy.difference_update(name for name, _, _ in hit)
                    self.node_down.clear()

        self.background(until_evicted)
        return s

    def leader(self) -> str | None:
        leases = self.cluster.json("-n", SYSTEM, "get", "leases")["items"]
        return next((lease["spec"].get("holderIdentity") for lease in leases if lease["spec"].get("holderIdentity")), None)

    def operator_killed(self, s: Strike, rng: random.Random) -> Strike:
        """Force-delete the leading replica's pod (its process is killed at once): the other must take over."""
        s.target = old = self.leader() or ""
        if not old:
            s.detail = "no leader"
            return s
        self.cluster.kubectl("-n", SYSTEM, "delete", "pod", old, "--grace-period=0", "--force", check=False)
        try:
            new = wait(lambda: (h := self.leader()) not in (None, old) and h, 120, "another replica leading")
            s.struck, s.detail = True, f"{new} leads"
        except TimeoutError as e:
            s.detail = str(e)
        wait(lambda: sum(p["status"].get("phase") == "Running" for p in self.cluster.pods(ns=SYSTEM)) >= 2, 120, "two operator replicas")
        return s

    def apiserver_restart(self, s: Strike, rng: random.Random) -> Strike:
        return self._restart(s, "kube-apiserver")

    def etcd_restart(self, s: Strike, rng: random.Random) -> Strike:
        return self._restart(s, "etcd")

    def _restart(self, s: Strike, component: str) -> Strike:
        s.target = component
        self.cluster.cp.restart(component)
        wait(lambda: self.cluster.kubectl("get", "--raw", "/readyz", check=False, timeout=10).returncode == 0, 120, "the API server ready")
        s.struck = True
        return s

    def conflict(self, s: Strike, rng: random.Random, seconds: float = 15.0) -> Strike:
        """A second writer patches the job's annotations and labels for ``seconds``: the
        operator's conditional status writes meet 409s and must read again."""
        from kubernetes import client, config

        jobs = self.running()
        if not jobs:
            s.detail = "no job running"
            return s
        s.target = name = rng.choice(jobs)[0]
        configuration = client.Configuration()
        config.load_kube_config(config_file=str(self.cluster.cp.kubeconfig), client_configuration=configuration)
        api = client.CustomObjectsApi(client.ApiClient(configuration))
        since = audit.size(self.cluster.cp.audit_log)
        until = time.monotonic() + seconds
        stop = threading.Event()

        def writer() -> None:
            n = 0
            while not stop.is_set() and time.monotonic() < until:
                n += 1
                body = {"metadata": {"annotations": {"chaos.shardwright.io/tick": str(n)}, "labels": {"chaos-tick": str(n % 7)}}}
                try:
                    api.patch_namespaced_custom_object("shardwright.io", "v1alpha1", NS, "trainingjobs", name, body, _request_timeout=10)
                except Exception:
                    stop.wait(0.2)

        threads = [threading.Thread(target=writer, daemon=True) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(seconds + 15)
        calls = audit.calls(self.cluster.cp.audit_log, audit.service_account(SYSTEM, OPERATOR_SA), since=since)
        conflicts = sum(c.code == 409 and c.resource.startswith("shardwright.io/trainingjobs") for c in calls)
        s.struck, s.detail = conflicts > 0, f"{conflicts} operator writes answered 409"
        return s
