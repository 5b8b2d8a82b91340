"""What the serving benchmarks share: replica processes, a streaming client, load shapes
(Poisson arrivals, closed-loop users) and the figures (TTFT, TPOT, goodput, hit rate).

Each request is a streamed greedy ``/v1/completions`` of token ids; the client times every
event, so TTFT (to the first token), TPOT (per request: the time after the first token over
the tokens after it, as vLLM's benchmark) and ITL (every gap between two tokens) come from
the same clock. A request *drops* when it gets no 200, an error event, or fewer tokens than
it asked for.
"""

from __future__ import annotations

import dataclasses
import http.client
import json
import random
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from shardwright.workers.config import ModelConfig  # noqa: E402
from shardwright.workers.serve.config import EngineConfig, ServeConfig  # noqa: E402

#: The ``small`` preset (as ``preset: small`` renders it), softmax attention only.
SMALL = ModelConfig(vocab_size=256, dim=256, layers=4, heads=8, kv_heads=4, ffn_dim=704, layer_kinds=("softmax",) * 4)


def start_replicas(tmp: Path, engines: Sequence[EngineConfig]) -> tuple[list[subprocess.Popen], list[str]]:
    """One ``python -m shardwright.workers.serve`` per engine config (one CPU thread each); their URLs once they listen."""
    procs, urls = [], []
    for i, engine in enumerate(engines):
        config = ServeConfig(model=SMALL, model_name="small", seed=1, replica=i, engine=engine, port_file=str(tmp / f"r{i}.port"))
        (tmp / f"r{i}.json").write_text(config.model_dump_json())
        procs.append(subprocess.Popen([sys.executable, "-m", "shardwright.workers.serve", "--config", str(tmp / f"r{i}.json")],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    for i in range(len(engines)):
        port = tmp / f"r{i}.port"
        while not (port.exists() and port.read_text()):
            assert procs[i].poll() is None, "a replica failed to start"
            time.sleep(0.1)
        urls.append(f"http://127.0.0.1:{port.read_text()}")
    return procs, urls


def stop(procs: Sequence[subprocess.Popen]) -> None:
    for p in procs:
        p.terminate()
    for p in procs:
        p.wait(30)


#: A draw of one request: (prompt token ids, tokens to generate).
Workload = Callable[[random.Random], tuple[list[int], int]]


@dataclasses.dataclass
class Result:
    prompt_tokens: int
    wanted: int
    #: Seconds from sending to the request's start of the run (Poisson schedules use it).
    sent: float = 0.0
    ttft: float | None = None
    e2e: float | None = None
    #: Arrival time of each token, seconds after sending.
    token_times: list[float] = dataclasses.field(default_factory=list)
    cached: int = 0
    error: str | None = None

    @property
    def tokens(self) -> int:
        return len(self.token_times)

    @property
    def dropped(self) -> bool:
        return self.error is not None or self.tokens < self.wanted

    @property
    def tpot(self) -> float | None:
        return (self.token_times[-1] - self.token_times[0]) / (self.tokens - 1) if self.tokens > 1 else None


def request(url: str, prompt: list[int], max_tokens: int, sent: float = 0.0) -> Result:
    """One streamed greedy request; never raises (a failure is ``Result.error``)."""
    host, port = url.removeprefix("http://").split(":")
    body = {"prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "ignore_eos": True, "stream": True,
            "stream_options": {"include_usage": True}, "return_token_ids": True}
    out = Result(len(prompt), max_tokens, sent)
    began = time.perf_counter()
    conn = http.client.HTTPConnection(host, int(port), timeout=120)
    try:
        conn.request("POST", "/v1/completions", json.dumps(body), {"Content-Type": "application/json"})
        resp = conn.getresponse()
        if resp.status != 200:
            out.error = f"HTTP {resp.status}: {resp.read()[:200]!r}"
            return out
        while line := resp.readline():
            if not line.startswith(b"data: {"):
                continue
            event = json.loads(line[6:])
            if "error" in event:
                out.error = str(event["error"])
                break
            now = time.perf_counter() - began
            for choice in event["choices"]:
                out.token_times += [now] * len(choice.get("token_ids") or ())
            if event.get("usage"):
                out.cached = event["usage"]["prompt_tokens_details"]["cached_tokens"]
    except (OSError, http.client.HTTPException, ValueError) as e:
        out.error = f"{type(e).__name__}: {e}"
    finally:
        conn.close()
    out.ttft = out.token_times[0] if out.token_times else None
    out.e2e = time.perf_counter() - began
    return out


def poisson(url: str, workload: Workload, n: int, rate: float,
            rng: random.Random) -> tuple[list[Result], float]:
    """``n`` requests drawn from ``workload`` (prompt, max tokens) at Poisson arrivals of
    ``rate`` per second; the results in sending order and the wall seconds until the last one ended."""
    results: list[Result | None] = [None] * n
    threads = []
    start = time.perf_counter()
    for i in range(n):
        prompt, max_tokens = workload(rng)
        t = threading.Thread(target=lambda i=i, p=prompt, m=max_tokens: results.__setitem__(i, request(url, p, m, time.perf_counter() - start)))
        t.start()
        threads.append(t)
        time.sleep(rng.expovariate(rate))
    for t in threads:
        t.join()
    return results, time.perf_counter() - start  # type: ignore[return-value]


def closed_loop(url: str, workload: Workload, users: int, n: int,
                rng: random.Random) -> tuple[list[Result], float]:
    """``users`` clients, each sending its next request when its last one ends, ``n`` in all."""
    jobs = [workload(rng) for _ in range(n)]
    results: list[Result] = []
    lock = threading.Lock()
    start = time.perf_counter()

    def user() -> None:
        while True:
            with lock:
                if not jobs:
                    return
                prompt, max_tokens = jobs.pop()
            r = request(url, prompt, max_tokens, time.perf_counter() - start)
            with lock:
                results.append(r)

    threads = [threading.Thread(target=user) for _ in range(users)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results, time.perf_counter() - start


def prefixed(prefixes: Sequence[list[int]], own: int, out: int) -> Workload:
    """The shared-prefix workload: one of ``prefixes``, ``own`` random tokens, ``out`` tokens to generate."""
    return lambda rng: (rng.choice(prefixes) + [rng.randrange(SMALL.vocab_size) for _ in range(own)], out)


def pct(values: Sequence[float], q: float) -> float | None:
    """The ``q``-th percentile (nearest rank), None for no values."""
    values = sorted(values)
    return values[min(len(values) - 1, int(q / 100 * len(values)))] if values else None


@dataclasses.dataclass(frozen=True)
class SLO:
    ttft: float
    tpot: float


def figures(results: Sequence[Result], wall: float, slo: SLO) -> dict[str, float | None]:
    """TTFT and TPOT p50/p99, ITL p99, output tokens/s, goodput (requests meeting both SLOs
    per second), prefix-hit rate (cached over prompt tokens) and the requests dropped."""
    done = [r for r in results if not r.dropped]
    ttft = [r.ttft for r in done]
    tpot = [r.tpot for r in done if r.tpot is not None]
    itl = [b - a for r in done for a, b in zip(r.token_times, r.token_times[1:])]
    good = [r for r in done if r.ttft <= slo.ttft and (r.tpot is None or r.tpot <= slo.tpot)]
    return {
        "ttft_p50": pct(ttft, 50), "ttft_p99": pct(ttft, 99), "tpot_p50": pct(tpot, 50), "tpot_p99": pct(tpot, 99),
        "itl_p99": pct(itl, 99), "tokens_per_s": sum(r.tokens for r in results) / wall, "goodput": len(good) / wall,
        "hit_rate": sum(r.cached for r in done) / max(1, sum(r.prompt_tokens for r in done)),
        "requests": len(results), "dropped": sum(r.dropped for r in results),
    }
