"""``shardwright serve`` as a child process for end-to-end tests, and clients that keep
sending to it: its files (status, replicas, events), waits, and a cleanup that leaves no
replica behind."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator

import yaml

from . import http

START_TIMEOUT = 150  # two or three torch imports on a busy 2-core machine


class ServeProcess:
    def __init__(self, tmp, pool: dict, inject: list[str]) -> None:
        self.file, self.workdir = tmp / "pool.yaml", tmp / "wd"
        self.file.write_text(yaml.safe_dump(pool))
        self.log_path = tmp / "serve.log"
        self.log = self.log_path.open("w")
        self.proc = subprocess.Popen(
            [sys.executable, "-c", "import sys; from shardwright.operator.cli import main; sys.exit(main())", "serve", str(self.file),
             "--port", "0", "--workdir", str(self.workdir), *(a for fault in inject for a in ("--inject", fault))],
            stdout=self.log, stderr=subprocess.STDOUT)

    def status(self) -> dict:
        try:
            return json.loads((self.workdir / "status.json").read_text())
        except (OSError, ValueError):
            return {}

    def pids(self) -> dict[str, int]:
        rows = json.loads((self.workdir / "replicas.json").read_text())["replicas"]
        return {r["name"]: r["pid"] for r in rows}

    def events(self) -> list[str]:
        return [json.loads(line)["reason"] for line in (self.workdir / "events.jsonl").read_text().splitlines()]

    def wait(self, what: Callable[[], bool], timeout: float = START_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while not what():
            assert self.proc.poll() is None, self.log_path.read_text()
            assert time.monotonic() < deadline, f"not reached; status {self.status()}"
            time.sleep(0.1)

    @property
    def url(self) -> str:
        return self.status()["endpoint"]

    def close(self) -> None:
        """Kill ``shardwright serve`` and every replica it left (a test that failed midway)."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(30)
        try:
            pids = list(self.pids().values())
        except (OSError, ValueError, KeyError):
            pids = []
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.log.close()


@contextlib.contextmanager
def serving(tmp, pool: dict, inject: list[str], *, routable: int) -> Iterator[ServeProcess]:
    """``shardwright serve`` of ``pool`` once ``routable`` replicas are; closed afterwards."""
    p = ServeProcess(tmp, pool, inject)
    try:
        p.wait(lambda: p.status().get("routableReplicas") == routable)
        yield p
    finally:
        p.close()


class Clients:
    """Threads that each send streamed requests one after another until ``stop()``; every
    answer's token count and every failure is kept."""

    def __init__(self, url: str, body: Callable[[int], dict], n: int) -> None:
        self.done = threading.Event()
        self.tokens: list[int] = []
        self.errors: list[str] = []
        self.threads = [threading.Thread(target=self._run, args=(url, body, i)) for i in range(n)]
        for t in self.threads:
            t.start()

    def _run(self, url: str, body: Callable[[int], dict], i: int) -> None:
        while not self.done.is_set():
            try:
                events = http.events(f"{url}/v1/completions", body(i))
                assert events[-1] == "[DONE]" and all("error" not in e for e in events[:-1]), events
                self.tokens.append(len([t for e in events[:-1] for t in e["choices"][0].get("token_ids", [])]))
            except (AssertionError, OSError) as e:  # a non-200 answer, an error event, a connection lost
                self.errors.append(str(e))

    def stop(self) -> None:
        self.done.set()
        for t in self.threads:
            t.join(120)
