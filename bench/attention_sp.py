"""Peak memory per rank and fwd+bwd time of the sequence-parallel attention kernels.

Run: ``.venv/bin/python bench/attention_sp.py`` (prints two markdown tables).

Memory method: every rank runs one forward+backward under ``torch.profiler`` with
``profile_memory=True``, which records each allocation and free of torch's CPU allocator
(including buffers inside the fused kernels and the receive buffers of transfers). The
running sum of those events, in time order, gives the peak bytes allocated during the
step; the bytes of the rank's inputs (q, k, v, dout shards) are added, so the figure is
"inputs + everything the step allocates at its peak". Python objects and gloo's own
socket buffers are not torch allocations and are not counted, for any row alike.

Time: median of 3 timed forward+backward steps after one warm-up, each rank with one
intra-op thread (the machine has 2 cores), against single-process SDPA with 1 and with 2
threads. All ranks are spawned gloo processes; a run that exceeds ``TIMEOUT_S`` fails.
"""

from __future__ import annotations

import datetime
import multiprocessing as mp
import os
import socket
import statistics
import time

import torch
import torch.nn.functional as F
from torch._C._profiler import _EventType
from torch.profiler import ProfilerActivity, profile

B, H, HKV, N, D = 1, 8, 8, 2048, 64
CAUSAL = True
TIMEOUT_S = 600
MEMORY_SIZES = (1, 2, 4)
TIME_SIZE = 2


def _kernels():
    from shardwright.kernels.attention import (
        ring_attention,
        tokenring_attention,
        ulysses_attention,
    )

    def sdpa(q, k, v, causal):
        return F.scaled_dot_product_attention(q, k, v, is_causal=causal, enable_gqa=True)

    return {
        "sdpa (full, 1 process)": (sdpa, "contiguous"),
        "ring zigzag": (lambda q, k, v, causal: ring_attention(q, k, v, causal=causal),
                        "zigzag"),
        "ulysses": (lambda q, k, v, causal: ulysses_attention(q, k, v, causal=causal),
                    "contiguous"),
        "tokenring": (lambda q, k, v, causal: tokenring_attention(q, k, v, causal=causal),
                      "contiguous"),
    }


def _inputs(layout):
    from shardwright.kernels.attention import shard_sequence

    gen = torch.Generator().manual_seed(0)
    shapes = [(B, H, N, D), (B, HKV, N, D), (B, HKV, N, D), (B, H, N, D)]
    full = [torch.randn(s, generator=gen) for s in shapes]
    shards = [shard_sequence(t, layout=layout).contiguous() for t in full]
    del full
    return shards


def _step(fn, q, k, v, dout):
    q, k, v = (t.detach().requires_grad_() for t in (q, k, v))
    fn(q, k, v, CAUSAL).backward(dout)


def _peak_bytes(fn, tensors) -> int:
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        _step(fn, *tensors)
    sizes: list[tuple[int, int]] = []
    stack = list(prof.profiler.kineto_results.experimental_event_tree())
    while stack:
        node = stack.pop()
        if node.tag == _EventType.Allocation:
            sizes.append((node.start_time_ns, node.extra_fields.alloc_size))
        stack.extend(node.children)
    live = peak = 0
    for _, size in sorted(sizes):
        live += size
        peak = max(peak, live)
    return peak + sum(t.numel() * t.element_size() for t in tensors)


def _seconds(fn, tensors) -> float:
    import torch.distributed as dist

    _step(fn, *tensors)
    times = []
    for _ in range(3):
        if dist.is_initialized():
            dist.barrier()
        start = time.perf_counter()
        _step(fn, *tensors)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _measure(name, what):
    fn, layout = _kernels()[name]
    tensors = _inputs(layout)
    return _peak_bytes(fn, tensors) if what == "memory" else _seconds(fn, tensors)


def _rank_main(rank, size, port, name, what, out):
    import torch.distributed as dist

    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=size,
                            timeout=datetime.timedelta(seconds=TIMEOUT_S))
    try:
        out.put((rank, _measure(name, what)))
    finally:
        dist.destroy_process_group()


def _run(size, name, what):
    """Per-rank results of ``_measure`` on ``size`` spawned gloo ranks."""
    ctx = mp.get_context("spawn")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = ctx.Queue()
    procs = [ctx.Process(target=_rank_main, args=(r, size, port, name, what, out))
             for r in range(size)]
    for p in procs:
        p.start()
    results = dict(out.get(timeout=TIMEOUT_S) for _ in procs)
    for p in procs:
        p.join(timeout=TIMEOUT_S)
    return [results[r] for r in range(size)]


def _single(name, what, threads):
    torch.set_num_threads(threads)
    return _measure(name, what)


def main() -> None:
    full = "sdpa (full, 1 process)"
    print(f"B={B} Hq={H} Hkv={HKV} N={N} D={D} fp32 causal={CAUSAL}, torch {torch.__version__}\n")
    base = _single(full, "memory", 1)
    print("| kernel | P | peak MiB per rank (max over ranks) | / full | target 1.2/P |")
    print("|---|---|---|---|---|")
    print(f"| {full} | 1 | {base / 2**20:.1f} | 1.00 | 1.20 |")
    for name in list(_kernels())[1:]:
        for size in MEMORY_SIZES:
            peak = max(_run(size, name, "memory"))
            print(f"| {name} | {size} | {peak / 2**20:.1f} | {peak / base:.2f} "
                  f"| {1.2 / size:.2f} |")
    t1, t2 = _single(full, "time", 1), _single(full, "time", 2)
    print("\n| kernel | P | fwd+bwd s (max over ranks) | vs SDPA 1 thread | vs SDPA 2 threads |")
    print("|---|---|---|---|---|")
    print(f"| {full}, 1 thread | 1 | {t1:.3f} | 1.00 | {t1 / t2:.2f} |")
    print(f"| {full}, 2 threads | 1 | {t2:.3f} | {t2 / t1:.2f} | 1.00 |")
    for name in list(_kernels())[1:]:
        seconds = max(_run(TIME_SIZE, name, "time"))
        print(f"| {name} | {TIME_SIZE} | {seconds:.3f} | {seconds / t1:.2f} | {seconds / t2:.2f} |")


if __name__ == "__main__":
    main()
