"""Chunked against token-by-token gated delta rule, forward + backward, on CPU.

    .venv/bin/python bench/linear_attention.py [--variant gdn|kda] [--T 512 2048 4096 8192] [--reps 3]

Per sequence length: CPU time of one forward + backward (median of ``--reps`` for the
chunked form, one run for the recurrent one; CPU time of this process rather than wall
time, because the benchmark machine is shared and wall time there measures the
neighbours; wall time is printed too), and the bytes autograd saves for the
backward (every tensor packed by ``torch.autograd.graph.saved_tensors_hooks``, counted once
per storage): the memory a training step holds between forward and backward. Prints a
markdown table; docs/benchmarks-linear.md records a run.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from shardwright.kernels import linear

B, H, K, V = 1, 4, 64, 64


#: variant -> (recurrent, chunked, decay shape after [B, T, H])
VARIANTS = {
    "gdn": (linear.recurrent_gated_delta_rule, linear.chunk_gated_delta_rule, ()),
    "kda": (linear.recurrent_kda, linear.chunk_kda, (K,)),
}


def inputs(T: int, decay_shape: tuple[int, ...] = ()) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(B, T, H, K, generator=gen)
    k = F.normalize(torch.randn(B, T, H, K, generator=gen), dim=-1)
    v = torch.randn(B, T, H, V, generator=gen)
    g = F.logsigmoid(torch.randn(B, T, H, *decay_shape, generator=gen) + 3)
    beta = torch.rand(B, T, H, generator=gen)
    return [x.requires_grad_() for x in (q, k, v, g, beta)]


def step(fn, xs: list[torch.Tensor], **kwargs) -> tuple[float, float, int]:
    """One forward + backward; returns (CPU seconds, wall seconds, bytes saved for backward)."""
    seen: dict[tuple[int, int], int] = {}

    def pack(t: torch.Tensor):
        storage = t.untyped_storage()
        seen[(storage.data_ptr(), storage.nbytes())] = storage.nbytes()
        return t

    cpu, wall = time.process_time(), time.perf_counter()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        o, _ = fn(*xs, **kwargs)
    o.sum().backward()
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    for x in xs:
        x.grad = None
    return cpu, wall, sum(seen.values())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", choices=sorted(VARIANTS), default="gdn")
    parser.add_argument("--T", type=int, nargs="+", default=[512, 2048, 4096, 8192])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--chunk-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    recurrent, chunked, decay_shape = VARIANTS[args.variant]
    print(f"{args.variant}: B={B} H={H} K={K} V={V}, float32, chunk {args.chunk_size}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads\n")
    print("| T | recurrent CPU s | chunked CPU s | speed-up | (wall s: rec / chunk) "
          "| recurrent saved MiB | chunked saved MiB | memory ratio |")
    print("|---|---|---|---|---|---|---|---|")
    for T in args.T:
        xs = inputs(T, decay_shape)
        step(chunked, xs, chunk_size=args.chunk_size)  # warm-up
        runs = [step(chunked, xs, chunk_size=args.chunk_size) for _ in range(args.reps)]
        t_chunk, w_chunk = (statistics.median(r[i] for r in runs) for i in (0, 1))
        m_chunk = runs[0][2]
        t_rec, w_rec, m_rec = step(recurrent, xs)
        mib = 2**20
        print(f"| {T} | {t_rec:.2f} | {t_chunk:.3f} | {t_rec / t_chunk:.1f}x | {w_rec:.2f} / {w_chunk:.3f} "
              f"| {m_rec / mib:.1f} | {m_chunk / mib:.1f} | {m_chunk / m_rec:.3f} |", flush=True)


if __name__ == "__main__":
    main()
