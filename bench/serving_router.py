"""The serving router: its added latency, and prefix-aware against round-robin routing.

    .venv/bin/python bench/serving_router.py [--requests 80] [--rate 4] [--rounds 2] [--latency-requests 200] [--seed 0]

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
import os
import random
import statistics
import tempfile
import time
from pathlib import Path

from serving_client import pct, poisson, prefixed, request, start_replicas, stop

from shardwright.workers.serve.config import EngineConfig
from shardwright.workers.serve.router.config import RouterConfig
from shardwright.workers.serve.router.server import Router

PREFIXES, PREFIX_LEN, OWN_LEN, OUT = 8, 384, 16, 8
ENGINE = EngineConfig(block_size=16, num_blocks=112, max_num_batched_tokens=512, max_model_len=512)


def added_latency(router_url: str, replica_url: str, n: int) -> tuple[float, float]:
    direct, routed = [], []
    for i in range(n):
        prompt = [i % 200, 7, 9, 11]
        direct.append(request(replica_url, prompt, 1).e2e)
        routed.append(request(router_url, prompt, 1).e2e)
    return statistics.median(direct), statistics.median(routed)


def shared_prefix(router_url: str, prefixes: list[list[int]], n: int, rate: float, rng: random.Random) -> dict[str, float]:
    results, _ = poisson(router_url, prefixed(prefixes, OWN_LEN, OUT), n, rate, rng)
    assert not any(r.dropped for r in results), [r.error for r in results if r.dropped]
    ttft = [r.ttft for r in results]
    return {"ttft_p50": pct(ttft, 50), "ttft_p90": pct(ttft, 90), "ttft_p99": pct(ttft, 99), "e2e_p50": statistics.median(r.e2e for r in results),
            "hit_rate": sum(r.cached for r in results) / (len(results) * (PREFIX_LEN + OWN_LEN))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=80, help="requests per policy and round")
    parser.add_argument("--rate", type=float, default=4.0, help="arrivals per second (Poisson)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--latency-requests", type=int, default=200, help="one-token requests each way for the added latency")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    print("load average before: " + " ".join(f"{v:.2f}" for v in os.getloadavg()), flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        procs, urls = start_replicas(Path(tmp), [ENGINE, ENGINE])
        try:
            routers = {}
            for policy in ("prefix-aware", "round-robin"):
                routers[policy] = Router(RouterConfig(model_name="small", vocab_size=256, max_model_len=512, block_size=16, policy=policy)).start()
                for i, url in enumerate(urls):
                    routers[policy].register(f"r{i}", url)
            while any(len(r.endpoints.routable()) < 2 for r in routers.values()):
                time.sleep(0.05)
            direct, routed = added_latency(routers["round-robin"].url, urls[0], args.latency_requests)
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
            stop(procs)
    print("load average after: " + " ".join(f"{v:.2f}" for v in os.getloadavg()))


if __name__ == "__main__":
    main()
