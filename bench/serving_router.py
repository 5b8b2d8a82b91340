"""The serving router: its added latency, and prefix-aware against round-robin routing.

    .venv/bin/python bench/serving_router.py [--requests 80] [--rate 4] [--seed 0]

Two replica processes (``python -m shardwright.workers.serve``, the ``small`` preset, one
CPU thread each) behind the router in this process, as ``shardwright serve`` runs them.

1. **Added latency**: one-token requests sent one at a time straight to a replica and
   through the router, alternating; the difference of the medians is what the router adds.
2. **Shared-prefix workload**: 8 system prompts of 384 tokens, each request one of them plus
   16 tokens of its own, 8 output tokens, Poisson arrivals at ``--rate`` per second. Each
   replica's KV cache holds about 4 of the prefixes, so where a prefix is sent decides
   whether it is computed again. Run once with ``prefix-aware`` and once with
   ``round-robin`` routing, each on fresh prefixes (the caches keep the earlier run's),
   alternating which goes first per round. Reports TTFT p50/p90/p99, end-to-end p50 and
   the prefix-cache hit rate (cached prompt tokens over prompt tokens, from each
   response's usage) and the ratio of the TTFT p90s.

Timings are wall clock on a shared machine: compare the ratios inside one run.
"""

from __future__ import annotations

import argparse
import http.client
import json
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from shardwright.workers.config import ModelConfig  # noqa: E402
from shardwright.workers.serve.config import EngineConfig, ServeConfig  # noqa: E402
from shardwright.workers.serve.router.config import RouterConfig  # noqa: E402
from shardwright.workers.serve.router.server import Router  # noqa: E402

PREFIXES, PREFIX_LEN, OWN_LEN, OUT = 8, 384, 16, 8
SMALL = ModelConfig(vocab_size=256, dim=256, layers=4, heads=8, kv_heads=4, ffn_dim=704, layer_kinds=("softmax",) * 4)
ENGINE = EngineConfig(block_size=16, num_blocks=112, max_num_batched_tokens=512, max_model_len=512)


def start_replicas(tmp: Path, n: int = 2) -> tuple[list[subprocess.Popen], list[str]]:
    procs, urls = [], []
    for i in range(n):
        config = ServeConfig(model=SMALL, model_name="small", seed=1, replica=i, engine=ENGINE, port_file=str(tmp / f"r{i}.port"))
        (tmp / f"r{i}.json").write_text(config.model_dump_json())
        procs.append(subprocess.Popen([sys.executable, "-m", "shardwright.workers.serve", "--config", str(tmp / f"r{i}.json")],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    for i in range(n):
        port = tmp / f"r{i}.port"
        while not (port.exists() and port.read_text()):
            assert procs[i].poll() is None, "a replica failed to start"
            time.sleep(0.1)
        urls.append(f"http://127.0.0.1:{port.read_text()}")
    return procs, urls


def request(url: str, prompt: list[int], max_tokens: int) -> tuple[float, float, int]:
    """(TTFT, end to end, cached prompt tokens) of one streamed greedy request."""
    host, port = url.removeprefix("http://").split(":")
    body = {"prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "ignore_eos": True, "stream": True,
            "stream_options": {"include_usage": True}, "return_token_ids": True}
    began = time.perf_counter()
    conn = http.client.HTTPConnection(host, int(port), timeout=120)
    conn.request("POST", "/v1/completions", json.dumps(body), {"Content-Type": "application/json"})
    resp = conn.getresponse()
    assert resp.status == 200, resp.read()
    ttft, cached = None, 0
    while line := resp.readline():
        if not line.startswith(b"data: {"):
            continue
        event = json.loads(line[6:])
        if ttft is None and any(c.get("token_ids") for c in event["choices"]):
            ttft = time.perf_counter() - began
        if event.get("usage"):
            cached = event["usage"]["prompt_tokens_details"]["cached_tokens"]
    conn.close()
    return ttft, time.perf_counter() - began, cached


def added_latency(router_url: str, replica_url: str, n: int) -> tuple[float, float]:
    direct, routed = [], []
    for i in range(n):
        prompt = [i % 200, 7, 9, 11]
        direct.append(request(replica_url, prompt, 1)[1])
        routed.append(request(router_url, prompt, 1)[1])
    return statistics.median(direct), statistics.median(routed)


def shared_prefix(router_url: str, prefixes: list[list[int]], n: int, rate: float, rng: random.Random) -> dict[str, float]:
    results: list[tuple[float, float, int]] = []
    threads = []
    for _ in range(n):
        prompt = rng.choice(prefixes) + [rng.randrange(256) for _ in range(OWN_LEN)]
        t = threading.Thread(target=lambda p=prompt: results.append(request(router_url, p, OUT)))
        t.start()
        threads.append(t)
        time.sleep(rng.expovariate(rate))
    for t in threads:
        t.join()
    ttft = sorted(r[0] for r in results)
    pct = lambda q: ttft[min(len(ttft) - 1, int(q / 100 * len(ttft)))]  # noqa: E731
    return {"ttft_p50": pct(50), "ttft_p90": pct(90), "ttft_p99": pct(99), "e2e_p50": statistics.median(r[1] for r in results),
            "hit_rate": sum(r[2] for r in results) / (len(results) * (PREFIX_LEN + OWN_LEN))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=80, help="requests per policy and round")
    parser.add_argument("--rate", type=float, default=4.0, help="arrivals per second (Poisson)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        procs, urls = start_replicas(Path(tmp))
        try:
            routers = {}
            for policy in ("prefix-aware", "round-robin"):
                routers[policy] = Router(RouterConfig(model_name="small", vocab_size=256, max_model_len=512, block_size=16, policy=policy)).start()
                for i, url in enumerate(urls):
                    routers[policy].register(f"r{i}", url)
            while any(len(r.endpoints.routable()) < 2 for r in routers.values()):
                time.sleep(0.05)
            direct, routed = added_latency(routers["round-robin"].url, urls[0], 60)
            print(f"added latency: direct p50 {direct * 1000:.2f} ms, through the router {routed * 1000:.2f} ms, "
                  f"added {(routed - direct) * 1000:.2f} ms")
            rows = {p: [] for p in routers}
            for rnd in range(args.rounds):
                order = list(routers) if rnd % 2 == 0 else list(reversed(routers))
                for policy in order:
                    prefixes = [[rng.randrange(256) for _ in range(PREFIX_LEN)] for _ in range(PREFIXES)]
                    rows[policy].append(shared_prefix(routers[policy].url, prefixes, args.requests, args.rate, rng))
                    print(f"round {rnd} {policy}: " + ", ".join(f"{k} {v:.3f}" for k, v in rows[policy][-1].items()), flush=True)
            print("\n| routing | TTFT p50 | TTFT p90 | TTFT p99 | e2e p50 | prefix hit rate |\n| --- | --- | --- | --- | --- | --- |")
            for policy, rs in rows.items():
                m = {k: statistics.median(r[k] for r in rs) for k in rs[0]}
                print(f"| {policy} | {m['ttft_p50'] * 1000:.0f} ms | {m['ttft_p90'] * 1000:.0f} ms | {m['ttft_p99'] * 1000:.0f} ms "
                      f"| {m['e2e_p50'] * 1000:.0f} ms | {m['hit_rate']:.0%} |")
            ratios = [a["ttft_p90"] / b["ttft_p90"] for a, b in zip(rows["prefix-aware"], rows["round-robin"])]
            print(f"\nTTFT p90 prefix-aware / round-robin, per round: {', '.join(f'{r:.2f}' for r in ratios)}; median {statistics.median(ratios):.2f}")
            for r in routers.values():
                r.stop()
        finally:
            for p in procs:
                p.terminate()
            for p in procs:
                p.wait(30)


if __name__ == "__main__":
    main()
