"""A real Prometheus for tests (Debian's ``prometheus``), and the chart's panel queries.

``Prometheus(folder).start()`` runs it on a free 127.0.0.1 port with a 1 s scrape interval
over a ``file_sd`` file; ``targets()`` rewrites that file, ``query()`` goes through the HTTP
API, ``stop()`` ends it by its pid.
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
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DASHBOARDS = sorted((ROOT / "helm" / "shardwright" / "dashboards").glob("*.json"))
#: Metric families only the operator in a cluster exports (its reconcile passes).
OPERATOR_ONLY = "shardwright_operator_"


def panels(dashboard: str | None = None) -> list[tuple[str, str, str]]:
    """(dashboard file, panel title, query) for every target of every panel (of one dashboard)."""
    out = []
    for path in DASHBOARDS:
        if dashboard is not None and path.name != dashboard:
            continue
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


def table(results: dict[str, list[dict]], dashboard: str) -> list[str]:
    """Markdown rows: each panel, its series count, their labels and the first value."""
    rows = [("dashboard", "panel", "series", "labels", "first value"), ("---",) * 5]
    for dashboard, title, expr in panels(dashboard):
        series = results.get(expr, [])
        labels = sorted({k for s in series for k in s["metric"]} - {"__name__", "instance", "job"})
        note = " (operator only)" if OPERATOR_ONLY in expr else ""
        first = series[0]["value"][1] if series else "-"
        rows.append((dashboard, title + note, str(len(series)), ", ".join(labels) or "-", first))
    return ["| " + " | ".join(row) + " |" for row in rows]


def binary() -> str:
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


def get(url: str, timeout: float = 2) -> str | None:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.read().decode()
    except (OSError, http.client.HTTPException, UnicodeDecodeError):
        return None  # not up yet, gone, or not HTTP


def stop(proc: subprocess.Popen, sig: int = signal.SIGTERM, wait: float = 30) -> None:
    """End a process a test started with ``start_new_session`` (and its process group)."""
    if proc.poll() is None:
        os.killpg(proc.pid, sig)
        try:
            proc.wait(wait)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


class Prometheus:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen | None = None

    def start(self) -> Prometheus:
        prometheus = binary()
        self.targets([])
        config = self.folder / "prometheus.yml"
        config.write_text(yaml.safe_dump({
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "scrape_configs": [{"job_name": "shardwright",
                                "file_sd_configs": [{"files": [str(self.folder / "targets.json")], "refresh_interval": "1s"}]}],
        }))
        self.process = subprocess.Popen(
            [prometheus, f"--config.file={config}", f"--storage.tsdb.path={self.folder / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn"],
            stdout=(self.folder / "prometheus.out").open("w"), stderr=subprocess.STDOUT, start_new_session=True,
        )
        return self

    def targets(self, ports) -> None:
        (self.folder / "targets.json").write_text(json.dumps([{"targets": [f"127.0.0.1:{p}" for p in sorted(ports)]}]))

    def alive(self) -> None:
        assert self.process is not None and self.process.poll() is None, \
            f"prometheus ended:\n{(self.folder / 'prometheus.out').read_text()[-2000:]}"

    def ready(self) -> bool:
        return get(f"{self.url}/-/ready") is not None

    def query(self, expr: str) -> list[dict]:
        body = get(f"{self.url}/api/v1/query?" + urllib.parse.urlencode({"query": expr}), timeout=5)
        assert body is not None, f"Prometheus did not answer {expr}"
        reply = json.loads(body)
        assert reply["status"] == "success", reply
        return reply["data"]["result"]

    def stop(self) -> None:
        if self.process is not None:
            stop(self.process)
