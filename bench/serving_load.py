"""The serving load generator: three comparisons side by side in one run.

    .venv/bin/python bench/serving_load.py [--rounds 2] [--requests 300] [--rate 6] [--pool-rate 3] [--only engines|pool]

Replica processes of the ``small`` preset (one CPU thread each), clients in this process
(``serving_client``: streamed greedy requests, every token timed). The SLO is the one of the
example pool in docs/serving.md: TTFT p99 0.5 s, TPOT p99 50 ms; goodput counts the requests
that meet both, per second.

(a) **Chunked against unchunked prefill** on the long-prompt mix: 30 % long prompts (448
    tokens, 16 out), 70 % short ones (32 tokens, 48 out), Poisson arrivals at ``--rate``/s,
    the same offered load on a replica with a 64-token chunked budget and one that
    prefills each prompt whole (budget 512). Target: chunked TPOT p99 at least 1.5x better
    at equal throughput.
(b) **Continuous batching against one request at a time** (``max_num_seqs`` 64 against 1):
    16 users in a closed loop (each sends its next request when its last one ends), prompts
    of 32 tokens, 64 out. Target: at least 3x the tokens/s, both within the TPOT p99 SLO.
(c) **Requests dropped** during a replica SIGKILL (while the router has a request in flight
    on it), a rollout (a new engine budget) and a scale-down (2 to 1) of a ``shardwright
    serve`` pool of two replicas, under Poisson arrivals of the shared-prefix workload (8
    prefixes of 256 tokens, 16 of its own, 16 out) at ``--pool-rate``/s. Target: 0 dropped.

(a) and (b) run ``--rounds`` times, the order of the two sides alternating; the tables give
each side's figures over all its rounds' requests. Timings are wall clock on a shared
machine: compare the ratios inside one run.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import yaml
from serving_client import SLO, Result, Workload, closed_loop, figures, poisson, prefixed, request, start_replicas, stop

from shardwright.workers.serve.config import EngineConfig

SERVING_SLO = SLO(ttft=0.5, tpot=0.05)
COLUMNS = ("ttft_p50", "ttft_p99", "tpot_p50", "tpot_p99", "itl_p99", "tokens_per_s", "goodput", "hit_rate", "dropped")
CHUNKED = EngineConfig(block_size=16, num_blocks=256, max_num_batched_tokens=64, max_model_len=512)
UNCHUNKED = CHUNKED.model_copy(update={"max_num_batched_tokens": 512, "enable_chunked_prefill": False})
BATCHED = EngineConfig(block_size=16, num_blocks=256, max_num_batched_tokens=256, max_model_len=512)
ONE_AT_A_TIME = BATCHED.model_copy(update={"max_num_seqs": 1})


def long_prompt_mix(rng: random.Random) -> tuple[list[int], int]:
    if rng.random() < 0.3:
        return [rng.randrange(256) for _ in range(448)], 16
    return [rng.randrange(256) for _ in range(32)], 48


def chat(rng: random.Random) -> tuple[list[int], int]:
    return [rng.randrange(256) for _ in range(32)], 64


def side_by_side(name: str, runs: dict[str, Callable[[random.Random], tuple[list[Result], float]]], rounds: int,
                 rng: random.Random) -> dict[str, dict]:
    """Each side ``rounds`` times, alternating which goes first, both sides of a round on the
    same draws (the same requests at the same times); each side's figures over all its
    rounds' requests together (a p99 over a few hundred requests is nearly their maximum)."""
    pooled: dict[str, tuple[list[Result], float]] = {side: ([], 0.0) for side in runs}
    for rnd in range(rounds):
        seed = rng.random()
        for side in list(runs) if rnd % 2 == 0 else list(reversed(runs)):
            results, wall = runs[side](random.Random(seed))
            pooled[side] = (pooled[side][0] + results, pooled[side][1] + wall)
            print(f"{name} round {rnd} {side}: " + _fmt_row(figures(results, wall, SERVING_SLO)) + _drops(results), flush=True)
    return {side: figures(results, wall, SERVING_SLO) for side, (results, wall) in pooled.items()}


def _drops(results: list[Result]) -> str:
    return "".join(f"\n  dropped: {r.error or f'{r.tokens} of {r.wanted} tokens'}" for r in results if r.dropped)


def _fmt_row(row: dict) -> str:
    return ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items())


def _table(title: str, sides: dict[str, dict]) -> str:
    def cell(key: str, v) -> str:
        if v is None:
            return "-"
        if key.startswith(("ttft", "tpot", "itl")):
            return f"{v * 1000:.0f} ms"
        if key == "hit_rate":
            return f"{v:.0%}"
        if key == "dropped":
            return f"{v:g}"
        return f"{v:.1f}" if isinstance(v, float) else str(v)

    lines = [f"\n{title}\n", "| | " + " | ".join(COLUMNS) + " |", "| --- " * (len(COLUMNS) + 1) + "|"]
    lines += [f"| {side} | " + " | ".join(cell(k, row[k]) for k in COLUMNS) + " |" for side, row in sides.items()]
    return "\n".join(lines)


def engines(args: argparse.Namespace, rng: random.Random) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        procs, (chunked, unchunked, batched, single) = start_replicas(Path(tmp), [CHUNKED, UNCHUNKED, BATCHED, ONE_AT_A_TIME])
        try:
            for url in (chunked, unchunked, batched, single):
                request(url, [1, 2, 3], 2)  # the first request pays one-time costs
            a = side_by_side("(a)", {
                "chunked (budget 64)": lambda r: poisson(chunked, long_prompt_mix, args.requests, args.rate, r),
                "unchunked": lambda r: poisson(unchunked, long_prompt_mix, args.requests, args.rate, r),
            }, args.rounds, rng)
            print(_table("(a) long-prompt mix, chunked against unchunked prefill (all rounds)", a))
            c, u = a.values()
            print(f"TPOT p99 unchunked / chunked: {u['tpot_p99'] / c['tpot_p99']:.2f} (target >= 1.5); "
                  f"ITL p99: {u['itl_p99'] / c['itl_p99']:.2f}; tokens/s chunked / unchunked: {c['tokens_per_s'] / u['tokens_per_s']:.2f}")
            b = side_by_side("(b)", {
                "continuous batching": lambda r: closed_loop(batched, chat, 16, 64, r),
                "one at a time": lambda r: closed_loop(single, chat, 16, 32, r),
            }, args.rounds, rng)
            print(_table("(b) 16 users in a closed loop, continuous batching against one request at a time (all rounds)", b))
            cb, one = b.values()
            within = [side for side, row in b.items() if row["tpot_p99"] <= SERVING_SLO.tpot]
            print(f"tokens/s batching / one at a time: {cb['tokens_per_s'] / one['tokens_per_s']:.2f} (target >= 3); "
                  f"within the TPOT p99 SLO of {SERVING_SLO.tpot * 1000:.0f} ms: {', '.join(within) or 'neither'}")
        finally:
            stop(procs)


# ----------------------------------------------------------------------------- (c) the pool


POOL = {
    "apiVersion": "shardwright.io/v1alpha1", "kind": "ServingPool", "metadata": {"name": "bench-pool"},
    "spec": {
        "model": {"preset": "small", "seed": 3},
        "engine": {"maxBatchTokens": 128, "blockSize": 16, "kvBlocks": 160, "maxModelLen": 512},
        "replicas": 2,
        "router": {"policy": "prefix-aware", "retries": 2, "requestTimeoutSeconds": 30},
        "slo": {"ttftP99Seconds": SERVING_SLO.ttft, "tpotP99Seconds": SERVING_SLO.tpot},
        "rollout": {"maxSurge": 1, "maxUnavailable": 0, "drainTimeoutSeconds": 30},
    },
}


class Load:
    """Poisson arrivals of ``workload`` against ``url`` until ``stop()``; every result kept with its send time."""

    def __init__(self, url: str, workload: Workload, rate: float, rng: random.Random) -> None:
        self.results: list[Result] = []
        self.start = time.perf_counter()
        self._done = threading.Event()
        self._threads: list[threading.Thread] = []
        self._loop = threading.Thread(target=self._run, args=(url, workload, rate, rng))
        self._loop.start()

    def now(self) -> float:
        return time.perf_counter() - self.start

    def _run(self, url: str, workload: Workload, rate: float, rng: random.Random) -> None:
        while not self._done.is_set():
            prompt, max_tokens = workload(rng)
            t = threading.Thread(target=lambda p=prompt, m=max_tokens, s=self.now(): self.results.append(request(url, p, m, s)))
            t.start()
            self._threads.append(t)
            self._done.wait(rng.expovariate(rate))

    def stop(self) -> float:
        self._done.set()
        self._loop.join()
        for t in self._threads:
            t.join()
        return self.now()


def pool(args: argparse.Namespace, rng: random.Random) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        manifest, workdir = tmp / "pool.yaml", tmp / "wd"
        manifest.write_text(yaml.safe_dump(POOL))
        proc = subprocess.Popen([sys.executable, "-c", "import sys; from shardwright.operator.cli import main; sys.exit(main())", "serve",
                                 str(manifest), "--port", "0", "--workdir", str(workdir)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            status = lambda: _read(workdir / "status.json")  # noqa: E731
            _wait(lambda: status().get("routableReplicas") == 2, proc)
            url = status()["endpoint"]
            prefixes = [[rng.randrange(256) for _ in range(256)] for _ in range(8)]
            load = Load(url, prefixed(prefixes, 16, 16), args.pool_rate, random.Random(rng.random()))
            phases: list[tuple[str, float, float]] = []

            def phase(name: str, act: Callable[[], None], done: Callable[[], bool]) -> None:
                time.sleep(args.settle)
                began = load.now()
                act()
                _wait(done, proc)
                phases.append((name, began, load.now()))
                print(f"(c) {name}: {load.now() - began:.1f} s", flush=True)

            pids = lambda: {r["name"]: r["pid"] for r in _read(workdir / "replicas.json").get("replicas", [])}  # noqa: E731
            first = pids()
            phase("replica killed", lambda: os.kill(first[_busy(url)], signal.SIGKILL),
                  lambda: status().get("routableReplicas") == 2 and len(set(pids()) - set(first)) == 1)
            before = set(pids())
            edited = POOL["spec"] | {"engine": POOL["spec"]["engine"] | {"maxBatchTokens": 96}}
            phase("rollout", lambda: manifest.write_text(yaml.safe_dump(POOL | {"spec": edited})),
                  lambda: not before & set(pids()) and status().get("updatedReplicas") == 2 and status().get("routableReplicas") == 2)
            phase("scale-down 2 -> 1", lambda: manifest.write_text(yaml.safe_dump(POOL | {"spec": edited | {"replicas": 1}})),
                  lambda: status().get("replicas") == 1)
            time.sleep(args.settle)
            wall = load.stop()
            router = _read_url(f"{url}/status")
            print("(c) the router: " + ", ".join(f"{k} {router[k]}" for k in ("requests", "failed", "retries", "migrations")))
        finally:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
    rows = {"whole run": figures(load.results, wall, SERVING_SLO)}
    for name, began, ended in phases:
        sent = [r for r in load.results if began <= r.sent <= ended]
        rows[f"sent during: {name}"] = figures(sent, ended - began, SERVING_SLO)
    print(_table(f"(c) shardwright serve, 2 replicas, shared-prefix workload at {args.pool_rate:g}/s (Poisson), {wall:.0f} s", rows))
    print(f"requests {len(load.results)}, dropped {sum(r.dropped for r in load.results)} (target 0)" + _drops(load.results))


def _read(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _busy(url: str) -> str:
    """A replica the router has a request in flight on (polled until there is one): killing it cuts a stream."""
    while True:
        busy = [r["name"] for r in _read_url(f"{url}/status")["replicas"] if r["inFlight"]]
        if busy:
            return busy[0]
        time.sleep(0.005)


def _read_url(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=10) as resp:
        return json.loads(resp.read())


def _wait(done: Callable[[], bool], proc: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit("shardwright serve ended or did not get there in time")
        time.sleep(0.1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2, help="rounds of (a) and (b)")
    parser.add_argument("--requests", type=int, default=300, help="requests per side and round of (a)")
    parser.add_argument("--rate", type=float, default=6.0, help="(a): arrivals per second (Poisson)")
    parser.add_argument("--pool-rate", type=float, default=3.0, help="(c): arrivals per second (Poisson)")
    parser.add_argument("--settle", type=float, default=3.0, help="(c): seconds of plain load before and after each change")
    parser.add_argument("--only", choices=("engines", "pool"), help="run only (a)+(b), or only (c)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    print(f"load average before: {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f} {os.getloadavg()[2]:.2f}", flush=True)
    if args.only != "pool":
        engines(args, rng)
    if args.only != "engines":
        pool(args, rng)
    print(f"load average after: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")


if __name__ == "__main__":
    main()
