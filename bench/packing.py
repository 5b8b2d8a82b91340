"""Document-aware packing against padding each document to the longest of its batch.

    .venv/bin/python bench/packing.py [--docs 160] [--seq-len 1024] [--median 180] [--sigma 1.1]
                                      [--pack-rows 2] [--rounds 3] [--threads 1]

The corpus: ``--docs`` document lengths drawn log-normal (median ``--median`` tokens,
``--sigma`` of the log; seed 0: a heavy tail like tokenized web text, a few documents
ten times the median), clipped to ``[2, seq_len]``; random token ids. Both arms train the
same transformer from the same initial weights (forward, backward, AdamW step) on every
document of the corpus once, so both see the same real tokens:

- **packed**: the trainer's own packing (``workers.packing.Packed``: documents whole, next
  fit, into samples of ``--seq-len`` inputs; the rest of a sample is padding, a run of
  its own), ``--pack-rows`` samples a step, positions restarting at each document and
  ``segments`` keeping attention inside it (one SDPA call per document on CPU);
- **padded**: as many steps, each of the next ``docs / steps`` documents, one a row, each
  padded to the longest of the step (no mask needed: padding after a causal row reaches
  no real token). Same steps, so the same optimizer work and real tokens a step.

Printed per arm: wall and process-CPU seconds over the corpus (median of ``--rounds``
rounds, the arms alternating within a round; one intra-op thread by default, so CPU time
is the work done: on a shared host a second thread's spin-waits for a core inflate it),
real (document) tokens/s by wall time, the fraction of token slots that are padding (the
share of the per-token work, projections, MLP, head and loss, spent on padding) and the
fraction of the score pairs a dense causal pass over the rows would compute that no
document needs (what padding pays and one SDPA call per document avoids). Then the ratio
packed/padded of tokens/s, by wall and by CPU time, each the median of the rounds' ratios.

A second table times one softmax layer's attention on one packed row of the corpus, each
way the model could keep documents apart on one rank: one SDPA call per document (what
``workers.mixers.attend`` does on CPU), SDPA with a boolean ``[B, 1, T, T]`` mask (what it
does on an accelerator) and the ring kernel's one-rank path with ``segments``.
docs/benchmarks-packing.md records a run.
"""

from __future__ import annotations

import argparse
import datetime
import os
import statistics
import time

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F

from shardwright.kernels import attention as sp_attention
from shardwright.workers.config import ModelConfig
from shardwright.workers.mixers import attend_each_document, document_mask
from shardwright.workers.model import Transformer
from shardwright.workers import packing
from shardwright.workers.packing import IGNORE
from shardwright.workers.batches import token_losses

CONFIG = dict(vocab_size=4096, dim=128, layers=4, heads=4, kv_heads=2, ffn_dim=384, layer_kinds=("softmax",) * 4)


def corpus(docs: int, median: float, sigma: float, seq_len: int) -> list[torch.Tensor]:
    lengths = np.clip(np.random.default_rng(0).lognormal(np.log(median), sigma, docs).astype(int), 2, seq_len)
    gen = torch.Generator().manual_seed(0)
    return [torch.randint(CONFIG["vocab_size"], (int(n),), generator=gen) for n in lengths]


def packed_samples(docs: list[torch.Tensor], seq_len: int) -> list[packing.Row]:
    """Every sample the trainer's packing (``workers.packing.Packed``) makes of ``docs``."""
    lengths = np.array([len(d) for d in docs])
    flat = torch.cat(docs).numpy()
    store = packing.Documents((flat,), np.zeros(len(docs), dtype=np.int64), np.cumsum(lengths) - lengths, lengths)
    packed = packing.Packed(store, seq_len, seed=0, what="bench")
    return [packed[i] for i in range(packed.size)]


def padded_batch(docs: list[torch.Tensor]):
    """``inputs, targets [n, longest]``, ``positions [longest]``: one document a row."""
    longest = max(len(d) for d in docs)
    inputs = torch.zeros(len(docs), longest, dtype=torch.long)
    targets = torch.full((len(docs), longest), IGNORE)
    for r, doc in enumerate(docs):
        inputs[r, : len(doc)], targets[r, : len(doc) - 1] = doc, doc[1:]
    return inputs, targets, torch.arange(longest)


def packed_steps(docs: list[torch.Tensor], args) -> list[tuple]:
    rows = packed_samples(docs, args.seq_len)
    return [tuple(torch.stack(field) for field in zip(*rows[i : i + args.pack_rows])) for i in range(0, len(rows), args.pack_rows)]


def padded_steps(docs: list[torch.Tensor], count: int) -> list[tuple]:
    """``count`` steps of (about) equally many documents each."""
    per_step = -(-len(docs) // count)
    return [padded_batch(docs[i : i + per_step]) for i in range(0, len(docs), per_step)]


def waste(batches: list[tuple], lengths: np.ndarray) -> tuple[float, float]:
    """Padding fraction of the token slots, and the fraction of causal score pairs a dense
    causal pass computes (``L (L + 1) / 2`` a row of L slots) that no document needs
    (``n (n + 1) / 2`` each, a document's last token not being an input when it ends a
    packed sample is neglected)."""
    slots = sum(b[0].numel() for b in batches)
    computed = sum(b[0].shape[0] * b[0].shape[1] * (b[0].shape[1] + 1) // 2 for b in batches)
    needed = int((lengths * (lengths + 1) // 2).sum())
    return 1 - lengths.sum() / slots, 1 - needed / computed


def train(batches: list[tuple], real_targets: int) -> tuple[float, float]:
    """Wall and CPU seconds of one pass over ``batches``: forward, backward, AdamW step."""
    torch.manual_seed(1)
    model = Transformer(ModelConfig(**CONFIG))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, foreach=False)
    wall, cpu = time.perf_counter(), time.process_time()
    for inputs, targets, positions, *segments in batches:
        loss = token_losses(model(inputs, positions, *segments), targets) / real_targets
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return time.perf_counter() - wall, time.process_time() - cpu


def masking(args) -> dict[str, float]:
    """Median seconds of attention forward + backward on one packed row of the corpus."""
    _, _, _, segments = packed_steps(corpus(args.docs, args.median, args.sigma, args.seq_len), args)[0]
    segments = segments[:1]
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, h, args.seq_len, 32, generator=gen).requires_grad_() for h in (4, 2, 2))
    ways = {
        "SDPA per document": lambda: attend_each_document(q, k, v, segments),
        "SDPA, boolean document mask": lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=document_mask(segments), enable_gqa=True),
        "ring kernel, one rank, segments": lambda: sp_attention.ring_attention(q, k, v, causal=True, layout="contiguous", segments=segments),
        "SDPA causal, no documents (reference)": lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True),
    }
    times: dict[str, list[float]] = {name: [] for name in ways}
    for _ in range(args.rounds * 3):
        for name, fn in ways.items():
            began = time.perf_counter()
            fn().sum().backward()
            times[name].append(time.perf_counter() - began)
    return {name: statistics.median(t) for name, t in times.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--docs", type=int, default=160)
    p.add_argument("--seq-len", type=int, default=1024)
    p.add_argument("--median", type=float, default=180.0)
    p.add_argument("--sigma", type=float, default=1.1)
    p.add_argument("--pack-rows", type=int, default=2)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    docs = corpus(args.docs, args.median, args.sigma, args.seq_len)
    lengths = np.array([len(d) for d in docs])
    real = int(lengths.sum())
    print(f"{datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC, {os.cpu_count()} CPUs, torch {torch.__version__}, "
          f"{args.threads} threads; {len(docs)} documents, {real} tokens: lengths median {np.median(lengths):.0f}, "
          f"mean {lengths.mean():.0f}, p90 {np.percentile(lengths, 90):.0f}, max {lengths.max()}")
    packed = packed_steps(docs, args)
    arms = {"packed": packed, "padded": padded_steps(docs, len(packed))}
    real_targets = real - len(docs)  # the loss's divisor: every document token but the last
    for arm, batches in arms.items():  # both arms train on the same tokens
        assert sum(int((b[1] != IGNORE).sum()) for b in batches) == real_targets, arm
    seconds: dict[str, list[tuple[float, float]]] = {arm: [] for arm in arms}
    for batches in arms.values():  # warm-up, untimed: first calls allocate and pick kernels
        train(batches[:2], real_targets)
    for r in range(args.rounds):
        for arm in (("packed", "padded") if r % 2 == 0 else ("padded", "packed")):
            seconds[arm].append(train(arms[arm], real_targets))
    print("\n| arm | steps | token slots | padding (slots) | attention pairs not needed | wall s | CPU s | real tokens/s |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for arm, batches in arms.items():
        slot_waste, pair_waste = waste(batches, lengths)
        wall = statistics.median(s[0] for s in seconds[arm])
        cpu = statistics.median(s[1] for s in seconds[arm])
        slots = sum(b[0].numel() for b in batches)
        print(f"| {arm} | {len(batches)} | {slots} | {slot_waste:.1%} | {pair_waste:.1%} | {wall:.2f} | {cpu:.2f} | {real / wall:,.0f} |")
    ratios = [pad[0] / pack[0] for pack, pad in zip(seconds["packed"], seconds["padded"])]
    cpu_ratios = [pad[1] / pack[1] for pack, pad in zip(seconds["packed"], seconds["padded"])]
    print(f"\npacked / padded real tokens/s: {statistics.median(ratios):.2f} (rounds {', '.join(f'{x:.2f}' for x in ratios)}); "
          f"by CPU time {statistics.median(cpu_ratios):.2f}")

    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)  # the kernel's one-rank group
    try:
        print(f"\n| one packed row of {args.seq_len} tokens, 4 query / 2 KV heads of 32 | forward + backward ms |")
        print("| --- | ---: |")
        for name, s in masking(args).items():
            print(f"| {name} | {s * 1e3:.1f} |")
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
