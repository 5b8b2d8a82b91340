"""Every panel of the chart's training dashboard, evaluated by a real Prometheus (Debian's package)
that scrapes a real ``shardwright run`` of examples/tiny-train.yaml.

Prometheus scrapes, every second, the ranks' telemetry endpoints (``/metrics`` on the free
ports ``backends/local.py`` gives each rank, found as the listening sockets of the run's
processes) and the operator's job metrics (``operator/metrics.py``'s collector, fed with the
run's ``status.json`` as the operator feeds it with the status it writes). Each panel query
then goes through Prometheus' HTTP API and must return at least one series, with the labels
the panel groups by and the job's name. The panels on the operator's reconcile loop have no
source outside a cluster: test_operator_metrics_prometheus.py proves them on the local
control plane.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import yaml
from prometheus_client import start_http_server
from pydantic import ValidationError

from shardwright.operator.api import TrainingJobStatus
from shardwright.operator.metrics import OperatorMetrics
from tests.observability.prom import DASHBOARDS, OPERATOR_ONLY, ROOT, Prometheus, expected_labels, free_port, get, panels, stop, table

SHARDWRIGHT = ROOT / ".venv" / "bin" / "shardwright"
JOB = "prom-tiny"
BOARD = "shardwright-training.json"

pytestmark = pytest.mark.slow


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
    for path in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(path).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:  # 0A: LISTEN
                ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


def test_every_dashboard_panel_returns_series_from_a_real_run(tmp_path, capsys):
    prom = Prometheus(tmp_path).start()
    assert DASHBOARDS and panels(BOARD), "the chart ships dashboards"

    job = yaml.safe_load((ROOT / "examples" / "tiny-train.yaml").read_text())
    job["metadata"]["name"] = JOB
    job["spec"]["training"]["steps"] = 2000  # long enough to be scraped; stopped below
    job["spec"]["evaluation"] = {"intervalSteps": 5, "samples": 4}  # the held-out loss panel
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
    try:
        rank_ports: set[int] = set()
        results: dict[str, list[dict]] = {}
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            assert run.poll() is None, f"the run ended early:\n{(tmp_path / 'run.out').read_text()[-2000:]}"
            prom.alive()
            try:
                status = TrainingJobStatus.model_validate_json((workdir / "status.json").read_text())
                metrics.jobs.update("default", JOB, status, "torch")  # as jobpass.py does after each pass
            except (OSError, ValidationError):
                pass  # not written yet, or caught mid-write
            if len(rank_ports) < 2:
                for port in listening_ports(descendants(run.pid)) - rank_ports:
                    if "shardwright_rank_info" in (get(f"http://127.0.0.1:{port}/metrics") or ""):
                        rank_ports.add(port)
                prom.targets(rank_ports | {exporter_port})
            if prom.ready():
                results = {expr: prom.query(expr) for _, _, expr in panels(BOARD)}
                if all(problem(expr, results[expr]) is None for _, _, expr in panels(BOARD) if OPERATOR_ONLY not in expr):
                    break
            time.sleep(1)
        assert len(rank_ports) == 2, f"found the telemetry of {len(rank_ports)} of 2 ranks"
    finally:
        stop(run, signal.SIGINT, wait=60)  # Ctrl-C: the ranks checkpoint and exit
        prom.stop()
        exporter.shutdown()

    with capsys.disabled():  # the table docs/testing.md records, as Markdown
        print("\n" + "\n".join(table(results, BOARD)))

    for _, title, expr in panels(BOARD):
        if OPERATOR_ONLY not in expr:
            assert problem(expr, results[expr]) is None, f"panel {title!r}: {problem(expr, results[expr])}"
