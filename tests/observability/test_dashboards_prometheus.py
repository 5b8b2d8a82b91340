"""Every panel of the chart's dashboards, evaluated by a real Prometheus (Debian's package)
that scrapes a real ``shardwright run`` of examples/tiny-train.yaml.

Prometheus scrapes, every second, the ranks' telemetry endpoints (``/metrics`` on the free
ports ``backends/local.py`` gives each rank, found as the listening sockets of the run's
processes) and the operator's job metrics (``operator/metrics.py``'s collector, fed with the
run's ``status.json`` as the operator feeds it with the status it writes). Each panel query
then goes through Prometheus' HTTP API and must return at least one series, with the labels
the panel groups by and the job's name. The panels on the operator's reconcile loop have no
source outside a cluster: they are evaluated and listed, not required (docs/testing.md).
"""

from __future__ import annotations

import http.client
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import yaml

from shardwright.operator.api import TrainingJobStatus
from prometheus_client import start_http_server
from pydantic import ValidationError

from shardwright.operator.metrics import OperatorMetrics

ROOT = Path(__file__).resolve().parents[2]
DASHBOARDS = sorted((ROOT / "helm" / "shardwright" / "dashboards").glob("*.json"))
SHARDWRIGHT = ROOT / ".venv" / "bin" / "shardwright"
JOB = "prom-tiny"
#: Metric families only the operator in a cluster exports (its reconcile passes).
OPERATOR_ONLY = "shardwright_operator_"

pytestmark = pytest.mark.slow


def panels() -> list[tuple[str, str, str]]:
    """(dashboard file, panel title, query) for every target of every panel."""
    out = []
    for path in DASHBOARDS:
        for panel in json.loads(path.read_text())["panels"]:
            for target in panel.get("targets", []):
                out.append((path.name, panel["title"], target["expr"]))
    return out


def expected_labels(expr: str) -> set[str]:
    """The labels a result series of ``expr`` carries: the outermost ``by (...)``, else the
    job's (and a rank's for rank metrics)."""
    if m := re.search(r"\bby \(([^)]*)\)", expr):
        return {label.strip() for label in m.group(1).split(",")} - {"le"}
    return {"name", "namespace"} | ({"rank"} if "shardwright_rank_" in expr else set())


def problem(expr: str, series: list[dict]) -> str | None:
    """What is wrong with a panel's result, or None: at least one series, each with the
    expected labels and the job's name, and one per rank where it groups by rank."""
    if not series:
        return f"{expr} returned no series"
    for s in series:
        if not expected_labels(expr) <= set(s["metric"]) or s["metric"].get("name") != JOB:
            return f"{expr}: {s['metric']} lacks {sorted(expected_labels(expr))} or name={JOB}"
    if "rank" in expected_labels(expr) and {s["metric"]["rank"] for s in series} != {"0", "1"}:
        return f"{expr}: ranks {sorted(s['metric']['rank'] for s in series)}, not both"
    return None


def prometheus_binary() -> str:
    found = shutil.which("prometheus")
    if found is None:
        message = "prometheus is not installed (apt-get install prometheus; .ci/run does it)"
        if os.environ.get("CI"):
            pytest.fail(message)  # CI installs it: its absence there is a broken setup, not a skip
        pytest.skip(message)
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def descendants(root: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue  # gone meanwhile
        ppid = int(text.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(stat.parent.name))
    out, todo = set(), [root]
    while todo:
        pid = todo.pop()
        out.add(pid)
        todo += children.get(pid, [])
    return out


def listening_ports(pids: set[int]) -> set[int]:
    """TCP ports in LISTEN state whose socket belongs to one of ``pids``."""
    inodes = set()
    for pid in pids:
        try:
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                if (target := os.readlink(fd)).startswith("socket:["):
                    inodes.add(target[8:-1])
        except OSError:
            continue
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:  # 0A: LISTEN
                ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


def get(url: str, timeout: float = 2) -> str | None:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.read().decode()
    except (OSError, http.client.HTTPException, UnicodeDecodeError):
        return None  # not up yet, gone, or not HTTP (the run's other ports: Ray, gloo)


def query(base: str, expr: str) -> list[dict]:
    body = get(f"{base}/api/v1/query?" + urllib.parse.urlencode({"query": expr}), timeout=5)
    assert body is not None, f"Prometheus did not answer {expr}"
    reply = json.loads(body)
    assert reply["status"] == "success", reply
    return reply["data"]["result"]


def stop(proc: subprocess.Popen, sig: int = signal.SIGTERM, wait: float = 30) -> None:
    """End a process this test started (and its process group: the run's Ray processes)."""
    if proc.poll() is None:
        os.killpg(proc.pid, sig)
        try:
            proc.wait(wait)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


def test_every_dashboard_panel_returns_series_from_a_real_run(tmp_path, capsys):
    prometheus = prometheus_binary()
    assert DASHBOARDS and panels(), "the chart ships dashboards"

    job = yaml.safe_load((ROOT / "examples" / "tiny-train.yaml").read_text())
    job["metadata"]["name"] = JOB
    job["spec"]["training"]["steps"] = 2000  # long enough to be scraped; stopped below
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(job))
    workdir = tmp_path / "run"
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    run = subprocess.Popen(
        [str(SHARDWRIGHT), "run", str(tmp_path / "job.yaml"), "--workdir", str(workdir)],
        cwd=tmp_path, env=env, stdout=(tmp_path / "run.out").open("w"), stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    metrics = OperatorMetrics()
    exporter_port = free_port()
    exporter, _ = start_http_server(exporter_port, addr="127.0.0.1", registry=metrics.registry)
    targets = tmp_path / "targets.json"
    targets.write_text("[]")
    prom_port = free_port()
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump({
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "scrape_configs": [{"job_name": "shardwright", "file_sd_configs": [{"files": [str(targets)], "refresh_interval": "1s"}]}],
    }))
    prom = subprocess.Popen(
        [prometheus, f"--config.file={tmp_path / 'prometheus.yml'}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
         f"--web.listen-address=127.0.0.1:{prom_port}", "--log.level=warn"],
        stdout=(tmp_path / "prometheus.out").open("w"), stderr=subprocess.STDOUT, start_new_session=True,
    )
    base = f"http://127.0.0.1:{prom_port}"
    try:
        rank_ports: set[int] = set()
        results: dict[str, list[dict]] = {}
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            assert run.poll() is None, f"the run ended early:\n{(tmp_path / 'run.out').read_text()[-2000:]}"
            assert prom.poll() is None, f"prometheus ended:\n{(tmp_path / 'prometheus.out').read_text()[-2000:]}"
            try:
                status = TrainingJobStatus.model_validate_json((workdir / "status.json").read_text())
                metrics.jobs.update("default", JOB, status, "torch")  # as handlers.py does after each pass
            except (OSError, ValidationError):
                pass  # not written yet, or caught mid-write
            if len(rank_ports) < 2:
                for port in listening_ports(descendants(run.pid)) - rank_ports:
                    if "shardwright_rank_info" in (get(f"http://127.0.0.1:{port}/metrics") or ""):
                        rank_ports.add(port)
                targets.write_text(json.dumps([{"targets": [f"127.0.0.1:{p}" for p in sorted(rank_ports | {exporter_port})]}]))
            if get(f"{base}/-/ready") is not None:
                results = {expr: query(base, expr) for _, _, expr in panels()}
                if all(problem(expr, results[expr]) is None for _, _, expr in panels() if OPERATOR_ONLY not in expr):
                    break
            time.sleep(1)
        assert len(rank_ports) == 2, f"found the telemetry of {len(rank_ports)} of 2 ranks"
    finally:
        stop(run, signal.SIGINT, wait=60)  # Ctrl-C: the ranks checkpoint and exit
        stop(prom)
        exporter.shutdown()

    rows = [("dashboard", "panel", "series", "labels", "first value")]
    for dashboard, title, expr in panels():
        series = results.get(expr, [])
        labels = sorted({k for s in series for k in s["metric"]} - {"__name__", "instance", "job"})
        note = " (operator only)" if OPERATOR_ONLY in expr else ""
        first = series[0]["value"][1] if series else "-"
        rows.append((dashboard, title + note, str(len(series)), ", ".join(labels) or "-", first))
    rows.insert(1, tuple("---" for _ in rows[0]))
    with capsys.disabled():  # the table docs/testing.md records, as Markdown
        print()
        for row in rows:
            print("| " + " | ".join(row) + " |")

    for _, title, expr in panels():
        if OPERATOR_ONLY not in expr:
            assert problem(expr, results[expr]) is None, f"panel {title!r}: {problem(expr, results[expr])}"
