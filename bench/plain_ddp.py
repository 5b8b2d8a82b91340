"""The baseline of bench/overhead.py: the same model, data and optimizer in a plain torch DDP
script (torch.multiprocessing, no Ray, no telemetry, no controller, no checkpoints).

    python bench/plain_ddp.py MANIFEST OUT.jsonl

Appends one JSON line per step (``step``, ``loss``, ``time``) from rank 0, like
``steps.jsonl`` of ``shardwright run``, so both are measured the same way.
"""

from __future__ import annotations

import datetime
import json
import sys
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
import yaml
from torch.nn.parallel import DistributedDataParallel

from shardwright.operator.api import parse
from shardwright.operator.backends.ports import free_port
from shardwright.workers import data as data_mod
from shardwright.workers.model import Transformer


def rank_main(rank: int, world: int, manifest: dict, out: str, port: int) -> None:
    spec = parse(manifest).spec
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=60))
    cfg = spec.model.resolve()
    torch.manual_seed(spec.training.seed)
    model = Transformer(cfg)
    ddp = DistributedDataParallel(model)
    opt = torch.optim.AdamW(model.parameters(), lr=spec.training.lr, betas=(0.9, 0.95), foreach=False)
    dcfg = spec.data
    data = data_mod.MarkovCopy(cfg.vocab_size, dcfg.seq_len, dcfg.seed)
    per_rank = dcfg.global_batch // world
    scale = world / (dcfg.global_batch * dcfg.seq_len)
    positions = torch.arange(dcfg.seq_len)
    log = open(out, "a") if rank == 0 else None
    for step in range(spec.training.steps):
        start = step * dcfg.global_batch + rank * per_rank
        micro = [range(s, min(s + dcfg.micro_batch, start + per_rank)) for s in range(start, start + per_rank, dcfg.micro_batch)]
        total = 0.0
        for i, indices in enumerate(micro):
            inputs, targets = data_mod.collate(data, indices)
            ctx = ddp.no_sync() if i < len(micro) - 1 else torch.enable_grad()
            with ctx:
                loss = F.cross_entropy(ddp(inputs, positions).flatten(0, 1), targets.flatten(), reduction="sum")
                (loss * scale).backward()
            total += loss.item()
        torch.nn.utils.clip_grad_norm_(model.parameters(), spec.training.grad_clip or float("inf"))
        opt.step()
        opt.zero_grad(set_to_none=True)
        if log:
            log.write(json.dumps({"step": step + 1, "loss": total * world / (dcfg.global_batch * dcfg.seq_len), "time": time.time()}) + "\n")
    if log:
        log.close()
    dist.barrier()  # tearing gloo down while a peer is still in it can hang
    # gloo's worker threads drop a finished collective's work a moment after it completes, and
    # that needs the GIL; the group's destructor joins those threads holding the GIL, so a
    # thread still dropping one deadlocks it (seen twice in 30 runs). Let them finish first.
    time.sleep(0.1)
    dist.destroy_process_group()


def main() -> None:
    manifest = yaml.safe_load(open(sys.argv[1]))
    world = sum(g["replicas"] * g.get("ranksPerReplica", 1) for g in manifest["spec"]["workers"])
    mp.spawn(rank_main, args=(world, manifest, sys.argv[2], free_port()), nprocs=world, join=True)


if __name__ == "__main__":
    main()
