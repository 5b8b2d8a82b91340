"""One scale run on a real control plane: KWOK GPU nodes, ``shardwright operator`` in its
own process (under a ServiceAccount, so the audit log holds its requests), TrainingJobs
created at a steady rate, and the harness playing what KWOK does not: it finishes each
generation (every pod Succeeded, exit 0) once all its pods run, and fails one pod of
every ``fail_every``-th job's first generation instead. Timed on this process's monotonic
clock from the pods' and jobs' watch events (bench/operator_scale_watch.py)."""

from __future__ import annotations

import collections
import concurrent.futures
import copy
import dataclasses
import os
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

from bench.operator_scale_watch import Watch, histogram_quantile, percentile, request_latency_buckets, requests_between
from e2e.cluster import audit, session
from e2e.cluster.controlplane import ControlPlane, _end
from shardwright.operator.backends import pods as render
from shardwright.operator.backends.ports import free_port
from tests.operator.kubeapi import NODES, PODS, TJ, Api, ApiError, path, tiny_job
from tests.support import audited

#: What each simulated node offers (an 8-GPU H100 server, as examples/nodes/mixed.yaml's).
NODE_ROOM = {"cpu": "190", "memory": "1900Gi", "nvidia.com/gpu": "8", "pods": "110"}
NODE_LABELS = {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3", "nvidia.com/gpu.count": "8",
               "nvidia.com/gpu.memory": "81559", "type": "kwok", "shardwright.io/bench": "scale"}
REPLICAS = 2


def scale_job(name: str) -> dict[str, Any]:
    """tiny-train with 2 one-GPU ranks; a restart follows a failure at once (no backoff), so
    the time to the next generation is the operator's and the cluster's, not a configured wait."""
    return tiny_job(name, workers=[{"name": "worker", "replicas": REPLICAS, "resources": {"limits": {"nvidia.com/gpu": 1}}}],
                    failurePolicy={"backoff": {"initialSeconds": 0}})


def add_nodes(api: Api, prefix: str, n: int, threads: int = 8) -> list[str]:
    """``n`` KWOK GPU nodes (KWOK marks them Ready and heartbeats them)."""
    def one(i: int) -> str:
        name = f"{prefix}-{i}"
        node = {"apiVersion": "v1", "kind": "Node", "metadata": {
            "name": name, "annotations": {session.KWOK_ANNOTATION: "fake"}, "labels": NODE_LABELS}}
        api.request("POST", path(NODES), node)
        api.merge(path(NODES, name=name, sub="status"), {"status": {"capacity": NODE_ROOM, "allocatable": NODE_ROOM}})
        return name

    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
        names = list(pool.map(one, range(n)))
    deadline = time.monotonic() + 120 + n / 10
    while time.monotonic() < deadline:
        listed = api.get(path(NODES), labelSelector="shardwright.io/bench=scale")["items"]
        ready = sum(1 for node in listed if node["metadata"]["name"].startswith(prefix + "-") and any(
            c["type"] == "Ready" and c["status"] == "True" for c in (node.get("status") or {}).get("conditions", [])))
        if ready >= n:
            return names
        time.sleep(1)
    raise RuntimeError(f"only {ready} of {n} KWOK nodes Ready")


def remove_nodes(api: Api, names: list[str]) -> None:
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda name: _quiet(api.request, "DELETE", path(NODES, name=name)), names))


def _quiet(call, *args) -> None:
    try:
        call(*args)
    except ApiError:
        pass


def proc_figures(pid: int) -> tuple[float, float, float]:
    """(CPU seconds, RSS MiB, peak RSS MiB) of process ``pid`` from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    mem = {k: int(v.split()[0]) / 1024 for k, v in (line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
           if k in ("VmRSS", "VmHWM")}
    return cpu, mem["VmRSS"], mem["VmHWM"]


@dataclasses.dataclass
class Generation:
    """What the pod watch saw of one generation of one job."""

    pods: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    bound_at: float | None = None
    finishing: bool = False


class ScaleRun:
    """The operator, the jobs and the clocks of one run in ``namespace``; :meth:`run` returns the report."""

    def __init__(self, cp: ControlPlane, namespace: str, work: Path, *, jobs: int, rate: float, fail_every: int = 10,
                 hold_s: float = 1.0, timeout_s: float = 1800.0, profile: bool = False) -> None:
        self.cp, self.ns, self.work = cp, namespace, work
        self.n, self.rate, self.fail_every, self.hold_s, self.timeout_s, self.profile = jobs, rate, fail_every, hold_s, timeout_s, profile
        self.api = Api(cp)
        self.lock = threading.Lock()
        self.gens: dict[tuple[str, int], Generation] = collections.defaultdict(Generation)
        self.created: dict[str, float] = {}
        self.failed_at: dict[str, float] = {}
        self.phases: dict[str, str] = {}
        self.finisher = concurrent.futures.ThreadPoolExecutor(8, thread_name_prefix="finish")
        self.errors: list[str] = []

    # ------------------------------------------------------------------ the operator

    def start_operator(self) -> subprocess.Popen:
        """``shardwright operator`` for this namespace, as the chart runs it but out of cluster,
        under a ServiceAccount of the namespace; ready once its /healthz answers."""
        kubeconfig = self.work / "operator.kubeconfig"
        self.user = audited.service_account(self.cp, self.ns, "scale-operator", kubeconfig)
        port = free_port()
        argv = [sys.executable, *(["-m", "cProfile", "-o", str(self.work / "operator.prof")] if self.profile else []),
                "-m", "shardwright.operator.cli", "operator", f"--namespace={self.ns}", "--webhook=off", "--metrics-port=0",
                f"--health-port={port}", "--bind-address=127.0.0.1"]
        log = (self.work / "operator.log").open("w")
        op = subprocess.Popen(argv, env={**os.environ, "KUBECONFIG": str(kubeconfig)}, stdout=log, stderr=subprocess.STDOUT,
                              cwd=self.work, start_new_session=True)
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            if op.poll() is not None:
                raise RuntimeError(f"the operator exited ({op.returncode}); see {self.work / 'operator.log'}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as r:
                    if r.status == 200:
                        return op
            except OSError:
                pass
            time.sleep(0.3)
        _end(op.pid, argv[0], op)
        raise RuntimeError(f"the operator's /healthz did not answer within 90 s; see {self.work / 'operator.log'}")

    # ------------------------------------------------------------------ what the watches see

    def on_pod(self, kind: str, pod: dict[str, Any], now: float) -> None:
        labels = pod["metadata"].get("labels") or {}
        key = (labels.get(render.LABEL_JOB, ""), int(labels.get(render.LABEL_GENERATION, 0)))
        with self.lock:
            gen = self.gens[key]
            if kind == "DELETED":
                gen.pods.pop(pod["metadata"]["name"], None)
                return
            gen.pods[pod["metadata"]["name"]] = pod
            pods = list(gen.pods.values())
            if gen.bound_at is None and len(pods) == REPLICAS and all(p["spec"].get("nodeName") for p in pods):
                gen.bound_at = now
            running = len(pods) == REPLICAS and all((p.get("status") or {}).get("phase") == "Running" for p in pods)
            if running and not gen.finishing:
                gen.finishing = True
                self.finisher.submit(self.finish, key, [copy.deepcopy(p) for p in pods])

    def on_job(self, kind: str, job: dict[str, Any], now: float) -> None:
        with self.lock:
            self.phases[job["metadata"]["name"]] = "Deleted" if kind == "DELETED" else (job.get("status") or {}).get("phase", "")

    def finish(self, key: tuple[str, int], pods: list[dict[str, Any]]) -> None:
        """The ranks of a running generation end: one fails (a first generation of every
        ``fail_every``-th job), or all succeed."""
        job, generation = key
        try:
            time.sleep(self.hold_s)
            fail = generation == 1 and self.fail_every and int(job.rsplit("-", 1)[1]) % self.fail_every == 0
            ordered = sorted(pods, key=lambda p: p["metadata"]["name"])
            for pod in ordered[-1:] if fail else ordered:
                container = pod["spec"]["containers"][0]
                ended = {"exitCode": 1, "reason": "Error", "message": "rank crashed (scale harness)"} if fail else {"exitCode": 0, "reason": "Completed"}
                status = {"phase": "Failed" if fail else "Succeeded", "containerStatuses": [{
                    "name": container["name"], "image": container["image"], "imageID": "", "ready": False, "restartCount": 0,
                    "state": {"terminated": ended}}]}
                if fail:
                    with self.lock:
                        self.failed_at[job] = time.monotonic()
                self.api.merge(path(PODS, self.ns, pod["metadata"]["name"], "status"), {"status": status})
        except Exception as e:  # noqa: BLE001 - counted and reported, the run goes on
            with self.lock:
                self.errors.append(f"finishing {job} generation {generation}: {e}")

    # ------------------------------------------------------------------ the run

    def create_jobs(self, deadline: float, in_flight: int = 4) -> None:
        """Create the jobs at ``rate`` per second, each at its slot, with at most ``in_flight``
        creates waiting on the API server (when it answers slower, at the rate it sustains);
        none after ``deadline``."""
        api, free = Api(self.cp), threading.Semaphore(in_flight)

        def create(name: str) -> None:
            try:
                with self.lock:
                    self.created[name] = time.monotonic()
                api.request("POST", path(TJ, self.ns), scale_job(name))
            except Exception as e:  # noqa: BLE001 - counted and reported, the run goes on
                with self.lock:
                    self.errors.append(f"creating {name}: {e}")
            finally:
                free.release()

        began = time.monotonic()
        with concurrent.futures.ThreadPoolExecutor(in_flight, thread_name_prefix="create") as pool:
            for i in range(self.n):
                if (wait := began + i / self.rate - time.monotonic()) > 0:
                    time.sleep(wait)
                free.acquire()
                if time.monotonic() > deadline:
                    return
                pool.submit(create, f"job-{i}")

    def settled(self) -> int:
        with self.lock:
            return sum(1 for phase in self.phases.values() if phase in ("Complete", "Failed"))

    def run(self) -> dict[str, Any]:
        op = self.start_operator()
        watches = [Watch(self.api, path(PODS, self.ns), render.LABEL_JOB, self.on_pod),
                   Watch(self.api, path(TJ, self.ns), "", self.on_job)]
        try:
            for w in watches:
                w.start()
                w.synced.wait(30)
            time.sleep(2)  # the operator's first lists are done
            cpu0, rss0, _ = proc_figures(op.pid)
            since, latency0, began = audit.size(self.cp.audit_log), request_latency_buckets(self.api), time.monotonic()
            deadline = began + self.timeout_s
            self.create_jobs(deadline)
            created_s = time.monotonic() - began
            while self.settled() < len(self.created) and time.monotonic() < deadline and op.poll() is None:
                time.sleep(0.5)
            if op.poll() is not None:
                raise RuntimeError(f"the operator exited ({op.returncode}); see {self.work / 'operator.log'}")
            elapsed = time.monotonic() - began
            latency1 = request_latency_buckets(self.api)
            cpu1, _, peak = proc_figures(op.pid)
        finally:
            for w in watches:
                w.stop()
            if op.poll() is None:
                op.send_signal(2)  # SIGINT: Kopf stops cleanly (and cProfile writes its file)
                try:
                    op.wait(60)
                except subprocess.TimeoutExpired:
                    _end(op.pid, op.args[0], op)
            audited.remove(self.cp, self.ns, "scale-operator")
            self.finisher.shutdown(wait=False, cancel_futures=True)
        return self.report(since, latency0, latency1, elapsed, created_s, cpu1 - cpu0, rss0, peak)

    def report(self, since: int, latency0, latency1, elapsed: float, created_s: float, cpu: float, rss0: float, peak: float) -> dict[str, Any]:
        made = audited.requests(self.cp.audit_log, self.user, since=since)
        by = collections.Counter(f"{r.verb} {r.resource}" for r in made)
        with self.lock:
            bound = {job: gen.bound_at - self.created[job] for (job, g), gen in self.gens.items()
                     if g == 1 and gen.bound_at is not None and job in self.created}
            restarted = {job: self.gens[(job, 2)].bound_at - t for job, t in self.failed_at.items()
                         if self.gens.get((job, 2)) and self.gens[(job, 2)].bound_at is not None}
            phases = collections.Counter(self.phases.get(job, "") for job in self.created)
            last = collections.Counter()
            for job, g in self.gens:
                last[job] = max(last[job], g)
            # Generations the harness did not cause: the operator restarted a job by itself.
            unasked = sum(max(0, last[job] - (2 if job in self.failed_at else 1)) for job in self.created)
            place_all = max(gen.bound_at for (_, g), gen in self.gens.items() if g == 1 and gen.bound_at) - min(self.created.values()) \
                if bound and len(bound) == len(self.created) else float("nan")
        return {
            "asked": self.n, "jobs": len(self.created), "rate_per_s": self.rate, "created_in_s": round(created_s, 1),
            "arrivals_per_s": round(len(self.created) / created_s, 2),
            "placed": len(bound), "complete": phases["Complete"], "failed": phases["Failed"], "all_settled_s": round(elapsed, 1),
            "place_all_s": round(place_all, 1),
            "bound_p50_s": round(percentile(list(bound.values()), 0.50), 3), "bound_p99_s": round(percentile(list(bound.values()), 0.99), 3),
            "failures": len(self.failed_at), "restarted": len(restarted), "unasked_generations": unasked,
            "restart_p50_s": round(percentile(list(restarted.values()), 0.50), 3),
            "restart_p99_s": round(percentile(list(restarted.values()), 0.99), 3),
            "operator_cpu_s": round(cpu, 1), "operator_rss_idle_mib": round(rss0, 1), "operator_rss_peak_mib": round(peak, 1),
            "rss_per_job_kib": round((peak - rss0) * 1024 / max(len(self.created), 1), 1),
            "operator_requests": len(made), "operator_requests_per_s": round(len(made) / elapsed, 1),
            "operator_requests_by_kind": dict(by.most_common(8)),
            "apiserver_requests_per_s": round(requests_between(latency0, latency1) / elapsed, 1),
            "apiserver_p50_ms": round(1000 * histogram_quantile(0.50, latency0, latency1), 1),
            "apiserver_p99_ms": round(1000 * histogram_quantile(0.99, latency0, latency1), 1),
            "harness_errors": self.errors[:5],
        }
