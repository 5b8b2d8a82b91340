"""Peak memory per rank and fwd+bwd time of the sequence-parallel attention kernels.

Run: ``.venv/bin/python bench/attention_sp.py`` (prints two markdown tables);
``--heads 32 --memory-only``: the memory table with 32 query and K/V heads.

Memory method (the same for every row, the full-SDPA reference included; every figure
comes from a spawned process with one intra-op thread):

- Counted: the rank's inputs (q, k, v, dout shards; for the reference the full tensors),
  plus the peak of everything one forward+backward allocates through torch's CPU
  allocator: outputs, tensors saved for backward, gradients (q.grad, k.grad, v.grad stay
  alive to the end), receive and send buffers, and the buffers inside the fused kernels.
  Recorded by ``torch.profiler`` with ``profile_memory=True`` (each allocation and free,
  with its size); the running sum in time order gives the peak. Maximum of 3 steps.
- Not counted: the full-sequence tensors each rank builds and shards *before* the step
  (a model produces only its shard), Python objects, and gloo's own buffers.
- Cross-check that catches what the allocator does not see (gloo, anything outside
  torch): the rise of the process's resident set during unprofiled steps (after a warm-up)
  (``VmHWM`` after resetting it through ``/proc/self/clear_refs``, minus ``VmRSS`` before),
  with glibc's mmap threshold fixed at 64 KiB (``MALLOC_MMAP_THRESHOLD_``) so that every
  tensor-sized block is mapped and unmapped, plus the inputs; maximum of 3 steps. It
  counts pages written, so a tensor allocated but not yet filled (the kernels allocate
  their outputs and gradients first and fill them pass by pass) shows up later or less.

Time: median of 5 timed forward+backward steps after one warm-up, each rank with one
intra-op thread (the machine has 2 cores), against single-process SDPA with 1 and with 2
threads; wall time, and the process's CPU time over all its threads (gloo's included),
which competing load disturbs less. All ranks are spawned gloo processes; a run that
exceeds ``TIMEOUT_S`` fails.
"""

from __future__ import annotations

import argparse
import datetime
import functools
import multiprocessing as mp
import os
import statistics
import time

import torch
import torch.nn.functional as F
from torch._C._profiler import _EventType
from torch.profiler import ProfilerActivity, profile

from shardwright.operator.backends.ports import free_port

B, HEADS, N, D = 1, 8, 2048, 64  # Hq = Hkv = HEADS unless --heads says otherwise
CAUSAL = True
TIMEOUT_S = 600
MEMORY_SIZES = (1, 2, 4)
TIME_SIZE = 2
TIME_STEPS = 5
#: Steps per memory figure, the maximum reported: gloo's threads free the buffers of a
#: finished all-to-all a little late or early, which moves Ulysses' peak by up to 1 MiB.
MEMORY_STEPS = 3


def _kernels(heads):
    """name -> (fn(q, k, v, causal), layout); "one pass" rows carry all K/V heads at once."""
    from shardwright.kernels.attention import (
        ring_attention,
        tokenring_attention,
        ulysses_attention,
    )

    def sdpa(q, k, v, causal):
        return F.scaled_dot_product_attention(q, k, v, is_causal=causal, enable_gqa=True)

    kernels = {"sdpa (full, 1 process)": (sdpa, "contiguous")}
    for name, fn, layout in [("ring zigzag", ring_attention, "zigzag"),
                             ("ulysses", ulysses_attention, "contiguous"),
                             ("tokenring", tokenring_attention, "contiguous")]:
        kernels[name] = (functools.partial(_call, fn, {}), layout)
        kernels[f"{name}, one pass"] = (
            functools.partial(_call, fn, {"kv_heads_per_pass": heads}), layout)
    return kernels


def _call(fn, kwargs, q, k, v, causal):
    return fn(q, k, v, causal=causal, **kwargs)


def _inputs(layout, heads):
    from shardwright.kernels.attention import shard_sequence

    gen = torch.Generator().manual_seed(0)
    full = [torch.randn((B, heads, N, D), generator=gen) for _ in range(4)]
    shards = [shard_sequence(t, layout=layout).contiguous() for t in full]
    del full
    return shards


def _step(fn, q, k, v, dout):
    q, k, v = (t.detach().requires_grad_() for t in (q, k, v))
    fn(q, k, v, CAUSAL).backward(dout)


def _peak_bytes(fn, tensors) -> int:
    """Inputs + peak bytes the step allocates through torch's CPU allocator."""
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
    return peak + _nbytes(tensors)


def _rss_rise(fn, tensors) -> int:
    """Inputs + rise of the resident set during one step (peak since reset minus before)."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset VmHWM to the current VmRSS
    before = _status_kib("VmRSS")
    _step(fn, *tensors)
    return (_status_kib("VmHWM") - before) * 1024 + _nbytes(tensors)


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        return int(next(line for line in f if line.startswith(field + ":")).split()[1])


def _nbytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def _seconds(fn, tensors) -> tuple[float, float]:
    """Median wall and process CPU seconds (all threads) of ``TIME_STEPS`` steps."""
    import torch.distributed as dist

    _step(fn, *tensors)
    wall, cpu = [], []
    for _ in range(TIME_STEPS):
        if dist.is_initialized():
            dist.barrier()
        start, start_cpu = time.perf_counter(), time.process_time()
        _step(fn, *tensors)
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    return statistics.median(wall), statistics.median(cpu)


def _measure(name, what, heads):
    fn, layout = _kernels(heads)[name]
    tensors = _inputs(layout, heads)
    if what == "time":
        return _seconds(fn, tensors)
    _step(fn, *tensors)  # warm-up: lazy initialisation is not part of the step
    rss = max(_rss_rise(fn, tensors) for _ in range(MEMORY_STEPS))
    return rss, max(_peak_bytes(fn, tensors) for _ in range(MEMORY_STEPS))


def _rank_main(rank, size, port, name, what, heads, out):
    import torch.distributed as dist

    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=size,
                            timeout=datetime.timedelta(seconds=TIMEOUT_S))
    try:
        out.put((rank, _measure(name, what, heads)))
    finally:
        dist.destroy_process_group()


def _run(size, name, what, heads):
    """Per-rank results of ``_measure`` on ``size`` spawned gloo ranks."""
    ctx = mp.get_context("spawn")
    port = free_port()
    out = ctx.Queue()
    procs = [ctx.Process(target=_rank_main, args=(r, size, port, name, what, heads, out))
             for r in range(size)]
    for p in procs:
        p.start()
    results = dict(out.get(timeout=TIMEOUT_S) for _ in procs)
    for p in procs:
        p.join(timeout=TIMEOUT_S)
    return [results[r] for r in range(size)]


def _single(name, what, threads, heads):
    torch.set_num_threads(threads)
    return _measure(name, what, heads)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--heads", type=int, default=HEADS, help="query and K/V heads")
    parser.add_argument("--memory-only", action="store_true", help="skip the time table")
    args = parser.parse_args()
    os.environ["MALLOC_MMAP_THRESHOLD_"] = "65536"  # spawned ranks inherit it
    full = "sdpa (full, 1 process)"
    print(f"B={B} Hq=Hkv={args.heads} N={N} D={D} fp32 causal={CAUSAL}, torch {torch.__version__}\n")
    print("| kernel | P | peak MiB per rank | in local q shards | RSS rise MiB | / full SDPA "
          "| target 1.2/P |")
    print("|---|---|---|---|---|---|---|")
    for name in _kernels(args.heads):
        if args.heads != HEADS and name.endswith("one pass"):
            continue  # the one-pass rows are the 8-head table's comparison
        for size in (1,) if name == full else MEMORY_SIZES:
            rss, peak = (max(column) for column in zip(*_run(size, name, "memory", args.heads)))
            base = peak if name == full else base
            shard = B * args.heads * N // size * D * 4
            print(f"| {name} | {size} | {peak / 2**20:.1f} | {peak / shard:.1f} "
                  f"| {rss / 2**20:.1f} | {peak / base:.2f} | {1.2 / size:.2f} |")
    if args.memory_only:
        return
    (t1, c1), (t2, c2) = (_single(full, "time", threads, args.heads) for threads in (1, 2))
    print("\n| kernel | P | fwd+bwd wall s (max over ranks) | CPU s per rank (max) "
          "| wall vs SDPA 1 thread | wall vs SDPA 2 threads |")
    print("|---|---|---|---|---|---|")
    print(f"| {full}, 1 thread | 1 | {t1:.3f} | {c1:.3f} | 1.00 | {t1 / t2:.2f} |")
    print(f"| {full}, 2 threads | 1 | {t2:.3f} | {c2:.3f} | {t2 / t1:.2f} | 1.00 |")
    for name in list(_kernels(args.heads))[1:]:
        wall, cpu = (max(column) for column in zip(*_run(TIME_SIZE, name, "time", args.heads)))
        print(f"| {name} | {TIME_SIZE} | {wall:.3f} | {cpu:.3f} | {wall / t1:.2f} "
              f"| {wall / t2:.2f} |")


if __name__ == "__main__":
    main()
