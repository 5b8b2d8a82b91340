"""What the operator costs the API server in a busy cluster, on the local control plane.

    .venv/bin/python bench/operator_watch.py --source /tmp/wt-before --source . [--pods 1000] [--minutes 3]

One cluster (e2e/cluster: etcd, kube-apiserver, controller manager, scheduler, KWOK with
simulated nodes) holds ``--pods`` pods that are not the operator's, Running on KWOK nodes,
``--churn`` of them replaced every minute (a busy cluster), and one small TrainingJob
(examples/tiny-train.yaml, its two pods on KWOK nodes too, trained one step a second by a
stand-in rank 0: KWOK gives pods loopback addresses, and this process answers the
operator's ``/status`` probe on every one of them). For each ``--source`` (a
checkout's root, e.g. a ``git worktree`` of the commit before; mapped into the
``shardwright`` package by a path shim) ``shardwright operator`` runs as a child process
under its own ServiceAccount, warms up, and is measured for ``--minutes``:

- API requests per minute it made, by verb and resource, from the API server's audit log
  (tests/support/audited.py: the log records service accounts);
- its resident memory (RSS: the last and the highest sample, every 5 s) and CPU seconds.

Results: docs/benchmarks-operator.md. Nothing here is a timed assert.
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures
import http.server
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from e2e.cluster import audit, session  # noqa: E402
from shardwright.operator.backends.pods import PodSettings  # noqa: E402
from tests.operator.kubeapi import Api, path  # noqa: E402
from tests.support import audited  # noqa: E402

NOISE, TRAIN, SYSTEM = "noise", "train", "shardwright-system"
NODES, PODS_PER_NODE = 10, 150
PODS, TJ = "v1/pods", "shardwright.io/v1alpha1/trainingjobs"


def kwok_node(i: int) -> dict:
    return {"apiVersion": "v1", "kind": "Node", "metadata": {
        "name": f"kwok-{i}", "annotations": {session.KWOK_ANNOTATION: "fake"}, "labels": {"type": "kwok"}}}


def add_nodes(cp, api: Api) -> None:
    """KWOK nodes with room for every pod of the run (KWOK marks them Ready)."""
    room = {"cpu": "64", "memory": "256Gi", "pods": str(PODS_PER_NODE)}
    for i in range(NODES):
        api.request("POST", path("v1/nodes"), kwok_node(i))
        api.merge(path("v1/nodes", name=f"kwok-{i}", sub="status"), {"status": {"capacity": room, "allocatable": room}})


def noise_pod(i: int) -> dict:
    """A pod of someone else's: labels of its own, none of the operator's."""
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": f"noise-{i}", "labels": {"app": "noise"}},
            "spec": {"nodeSelector": {"type": "kwok"}, "terminationGracePeriodSeconds": 0,
                     "containers": [{"name": "c", "image": "busybox", "resources": {"requests": {"cpu": "10m"}}}]}}


def running(api: Api, namespace: str) -> int:
    listed = api.get(path(PODS, namespace), fieldSelector="status.phase=Running")
    return len(listed["items"])


def fill(api: Api, n: int) -> None:
    """``n`` noise pods, created 8 at a time, then wait until KWOK runs them all."""
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda i: api.request("POST", path(PODS, NOISE), noise_pod(i)), range(n)))
    wait(lambda: running(api, NOISE) >= n, 600, f"{n} noise pods Running")


def churn(api: Api, first: int, per_minute: int, stop: threading.Event) -> None:
    """Replace the oldest noise pod by a new one, ``per_minute`` times a minute."""
    oldest, new = 0, first
    while per_minute and not stop.wait(60 / per_minute):
        try:
            api.request("DELETE", path(PODS, NOISE, f"noise-{oldest}"), {"kind": "DeleteOptions", "apiVersion": "v1", "gracePeriodSeconds": 0})
            api.request("POST", path(PODS, NOISE), noise_pod(new))
            oldest, new = oldest + 1, new + 1
        except Exception as e:  # noqa: BLE001 - a slow API server skips a beat, the run goes on
            print(f"churn: {e}", file=sys.stderr)


def rank0(api: Api, port: int) -> http.server.ThreadingHTTPServer:
    """Rank 0 of the job, training a step a second: answers ``GET /status`` on ``port`` of
    every loopback address (a KWOK pod's IP is one), for the generation the status names."""
    began = time.monotonic()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            status = (api.get(path(TJ, TRAIN, "tiny-train")) or {}).get("status") or {}
            step = int(time.monotonic() - began)
            body = json.dumps({"generation": status.get("generation"), "step": step, "loss": 5 / (1 + step / 100),
                               "tokensPerSecond": 1024.0, "stepSeconds": [1.0, 1.0]}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("0.0.0.0", port), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def wait(check, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := check():
            return value
        time.sleep(1)
    raise RuntimeError(f"timed out after {timeout:.0f} s waiting for {what}")


def shim(source: Path, into: Path) -> Path:
    """A folder whose ``shardwright`` package is ``source``'s operator, workers and kernels."""
    pkg = into / "shardwright"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    for top in ("operator", "workers", "kernels"):
        (pkg / top).symlink_to(source.resolve() / top)
    return into


def start_operator(source: Path, kubeconfig: Path, work: Path) -> subprocess.Popen:
    env = {**os.environ, "KUBECONFIG": str(kubeconfig), "PYTHONPATH": str(shim(source, work / "shim"))}
    argv = [sys.executable, "-c", "from shardwright.operator.cli import main; raise SystemExit(main())", "operator",
            "--webhook=off", "--metrics-port=0", "--health-port=0", "--bind-address=127.0.0.1"]
    log = (work / "operator.log").open("w")
    return subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=work)


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(cp, api: Api, source: Path, minutes: float, warmup_s: float, work: Path) -> dict:
    """Run the operator of ``source``; its requests, memory and CPU over ``minutes``."""
    kubeconfig = work / "operator.kubeconfig"
    user = audited.service_account(cp, SYSTEM, "operator", kubeconfig)
    op = start_operator(source, kubeconfig, work)
    try:
        wait(lambda: ((api.get(path(TJ, TRAIN, "tiny-train")) or {}).get("status") or {}).get("phase") == "Running",
             180, "the TrainingJob Running")
        time.sleep(warmup_s)
        since, cpu0, began = audit.size(cp.audit_log), cpu_s(op.pid), time.monotonic()
        samples = []
        while time.monotonic() - began < minutes * 60:
            if op.poll() is not None:
                raise RuntimeError(f"the operator exited ({op.returncode}); see {work / 'operator.log'}")
            samples.append(rss_mib(op.pid))
            time.sleep(5)
        elapsed_min = (time.monotonic() - began) / 60
        cpu = cpu_s(op.pid) - cpu0
    finally:
        op.send_signal(signal.SIGTERM)
        try:
            op.wait(30)
        except subprocess.TimeoutExpired:
            op.kill()
            op.wait()
    made = audited.requests(cp.audit_log, user, since=since)
    by = collections.Counter(f"{r.verb} {r.resource}" for r in made)
    return {
        "source": str(source), "minutes": round(elapsed_min, 2),
        "requests_per_min": round(len(made) / elapsed_min, 1),
        "by_verb_resource_per_min": {k: round(v / elapsed_min, 1) for k, v in sorted(by.items())},
        "rss_mib_last": round(samples[-1], 1), "rss_mib_max": round(max(samples), 1),
        "cpu_s_per_min": round(cpu / elapsed_min, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", type=Path, action="append", required=True, help="a checkout whose operator runs (repeatable)")
    parser.add_argument("--pods", type=int, default=1000, help="pods that are not the operator's")
    parser.add_argument("--churn", type=int, default=60, help="of them replaced per minute")
    parser.add_argument("--minutes", type=float, default=3.0, help="measured per source")
    parser.add_argument("--warmup", type=float, default=30.0, help="seconds after the job runs before measuring")
    args = parser.parse_args()
    state = Path(tempfile.mkdtemp(prefix="shardwright-bench-"))
    cp = session.control_plane(state)
    cp.start()
    stop = threading.Event()
    try:
        session.start_kwok(cp)
        api = Api(cp)
        add_nodes(cp, api)
        for ns in (NOISE, TRAIN):
            cp.kubectl("create", "namespace", ns)
        wait(lambda: cp.kubectl("-n", TRAIN, "get", "serviceaccount", "default", check=False).returncode == 0, 60, "serviceaccount default")
        began = time.monotonic()
        fill(api, args.pods)
        print(f"{args.pods} noise pods Running after {time.monotonic() - began:.0f} s", file=sys.stderr)
        job = yaml.safe_load((ROOT / "examples" / "tiny-train.yaml").read_text())
        job["spec"]["training"]["steps"] = 1_000_000  # trains all along
        api.request("POST", path(TJ, TRAIN), job)
        rank0(api, PodSettings().telemetry_port)
        threading.Thread(target=churn, args=(api, args.pods, args.churn, stop), daemon=True).start()
        results = []
        for i, source in enumerate(args.source):
            work = state / f"run-{i}"
            work.mkdir()
            results.append(measure(cp, api, source, args.minutes, args.warmup, work))
            print(json.dumps(results[-1]), flush=True)
    finally:
        stop.set()
        cp.stop()
    print(json.dumps({"pods": args.pods, "churn_per_min": args.churn, "results": results}, indent=1))


if __name__ == "__main__":
    main()
