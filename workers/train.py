"""The rank entry point: load, step, checkpoint, log — until the last step or a stop request.

``main(config)`` runs inside every rank process (a Ray actor locally, a pod's process on
Kubernetes). The rank's place in the world comes from the torch environment contract
(``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``, ...); everything else from ``WorkerConfig``.

Determinism: parameters are initialised from ``optim.seed`` on every rank, samples are a
pure function of their global index, intra-op threads are fixed by the config and torch's
deterministic algorithms are on, so a run resumed at the same world size reproduces the
uninterrupted loss curve bit for bit.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import math
import os
import threading
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel

from . import data as data_mod
from .checkpoint import Checkpointer, damage
from .config import RankEnv, WorkerConfig, softmax_kernel
from .faults import KILL_EXIT_CODE
from .mixers import SequenceContext
from .model import Transformer
from .telemetry import Telemetry

#: Steps the reported throughput is averaged over.
THROUGHPUT_WINDOW = 10


def main(config: WorkerConfig | str, env: RankEnv | None = None, stop: threading.Event | None = None) -> dict[str, Any]:
    """Train one generation on this rank; returns the rank's summary."""
    cfg = WorkerConfig.model_validate_json(config) if isinstance(config, str) else config
    env = env or RankEnv.from_environ()
    torch.set_num_threads(cfg.threads)
    torch.use_deterministic_algorithms(cfg.deterministic)
    dist.init_process_group(
        "gloo",
        init_method=f"tcp://{env.master_addr}:{env.master_port}",
        rank=env.rank,
        world_size=env.world_size,
        timeout=datetime.timedelta(seconds=cfg.collective_timeout_s),
    )
    try:
        trainer = Trainer(cfg, env, stop or threading.Event())
        try:
            return trainer.run()
        finally:
            trainer.telemetry.close()
    finally:
        dist.destroy_process_group()


def lr_at(step: int, cfg) -> float:
    """Linear warmup to ``lr``, then cosine decay to a tenth of it at the last step."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(cfg.steps - cfg.warmup_steps, 1)
    return cfg.lr * (0.1 + 0.45 * (1 + math.cos(math.pi * min(progress, 1.0))))


class Trainer:
    def __init__(self, cfg: WorkerConfig, env: RankEnv, stop: threading.Event) -> None:
        self.cfg, self.env, self.stop = cfg, env, stop
        par = cfg.parallel
        if par.world_size != env.world_size:
            raise ValueError(f"plan has {par.world_size} ranks but WORLD_SIZE is {env.world_size}")
        self.dp_rank, self.sp_rank = divmod(env.rank, par.sequence)
        kind = softmax_kernel(par.sequence_kind, cfg.model.layer_kinds)
        self.ctx = SequenceContext(group=self._sequence_group(), degree=par.sequence, kind=kind)

        torch.manual_seed(cfg.optim.seed)
        self.model = Transformer(cfg.model, self.ctx)
        self.ddp = DistributedDataParallel(self.model)
        self.optimizer = torch.optim.AdamW(
            self.model.parameters(), lr=cfg.optim.lr, betas=(0.9, 0.95),
            weight_decay=cfg.optim.weight_decay, foreach=False,
        )
        self.data = data_mod.dataset(cfg.data, cfg.model.vocab_size)
        self.checkpointer = Checkpointer(cfg.checkpoint, layout=par.layout, generation=cfg.generation)
        self.telemetry = Telemetry(
            job=cfg.job, namespace=cfg.namespace, rank=env.rank, world_size=env.world_size,
            generation=cfg.generation, layout=par.layout, total_steps=cfg.optim.steps,
        )
        self.telemetry.serve(env.telemetry_port if env.telemetry_port is not None else cfg.telemetry_port)
        self.step = 0
        resumed, rejected = None, []
        if cfg.checkpoint.resume_from:
            manifest, rejected = self.checkpointer.load(cfg.checkpoint.resume_from, self.model, self.optimizer)
            self.step = resumed = manifest["step"]
            self.telemetry.record_checkpoint(manifest)
        self.telemetry.update(state="running", step=self.step, resumedFrom=resumed, rejectedCheckpoints=rejected)

    def _sequence_group(self) -> dist.ProcessGroup | None:
        par = self.cfg.parallel
        if par.sequence == 1:
            return None
        mine = None
        for d in range(par.data):  # every rank creates every group, in the same order
            group = dist.new_group([d * par.sequence + s for s in range(par.sequence)])
            if d == self.dp_rank:
                mine = group
        return mine

    def run(self) -> dict[str, Any]:
        total = self.cfg.optim.steps
        ends: list[float] = [time.monotonic()]
        tokens_per_step = self.cfg.data.global_batch * self.cfg.data.seq_len
        stopped = False
        while self.step < total and not stopped:
            began = time.monotonic()
            self.telemetry.update(activity="computing")
            loss_sum = self.train_step()
            self.step += 1
            self.inject_rank_faults(time.monotonic() - began)
            seconds = time.monotonic() - began
            loss, stopped, step_seconds = self.exchange_step_facts(loss_sum, seconds)
            stall = None
            if stopped or self.checkpointer.due(self.step, total):
                saving = time.monotonic()
                self.checkpointer.save(self.step, self.model, self.optimizer, data_position=self.step * self.cfg.data.global_batch)
                stall = time.monotonic() - saving
                self.inject_rank_faults(0.0, during="checkpoint")
            self.record_commits()
            ends = (ends + [time.monotonic()])[-THROUGHPUT_WINDOW - 1 :]
            rate = tokens_per_step * (len(ends) - 1) / max(ends[-1] - ends[0], 1e-9)
            self.telemetry.record_step(
                step=self.step, loss=loss, seconds=seconds, tokens=tokens_per_step // self.env.world_size,
                tokens_per_second=rate, step_seconds=step_seconds, checkpoint_stall=stall,
            )
            self.log_step(loss, seconds, rate, stall)
        self.checkpointer.wait()
        self.record_commits()
        state = "stopped" if stopped and self.step < total else "complete"
        self.telemetry.update(state=state)
        return {**self.telemetry.status(), "state": state}

    def train_step(self) -> torch.Tensor:
        """Forward and backward over this rank's micro-batches, then one optimizer step."""
        cfg = self.cfg
        for group in self.optimizer.param_groups:
            group["lr"] = lr_at(self.step, cfg.optim)
        part = data_mod.rank_slice(self.step, cfg.data, self.dp_rank, cfg.parallel.data, cfg.parallel.data_shares)
        # Each rank's loss is a sum over its tokens divided by the global token count, times
        # the world size that DDP's gradient averaging divides by: the exact global mean.
        scale = self.env.world_size / (cfg.data.global_batch * cfg.data.seq_len)
        loss_sum = torch.zeros((), dtype=torch.float64)
        for i, indices in enumerate(part.micro_batches):
            inputs, targets = data_mod.collate(self.data, indices)
            inputs, targets = self.ctx.shard(inputs, dim=1), self.ctx.shard(targets, dim=1)
            positions = self.ctx.shard(torch.arange(cfg.data.seq_len), dim=0)
            last = i == len(part.micro_batches) - 1
            with contextlib.nullcontext() if last else self.ddp.no_sync():
                logits = self.ddp(inputs, positions)
                loss = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), reduction="sum")
                (loss * scale).backward()
            loss_sum += loss.detach().double()
        if cfg.optim.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.optim.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return loss_sum

    def inject_rank_faults(self, compute_seconds: float, during: str | None = None) -> None:
        """Carry out the faults this config injects at this step (see workers/faults.py)."""
        where = {"rank": self.env.rank, "step": self.step, "generation": self.cfg.generation}
        for fault in self.cfg.faults:
            if fault.during != during:
                continue
            if fault.kind == "slow" and fault.active(**where):
                time.sleep((fault.factor - 1.0) * compute_seconds)
            elif fault.kind == "kill" and fault.fires(**where):
                os._exit(KILL_EXIT_CODE)
            elif fault.kind == "hang" and fault.fires(**where):
                self.telemetry.update(activity="hung")
                while True:
                    time.sleep(3600)

    def record_commits(self) -> None:
        """Publish checkpoints committed since the last step; damage one if a fault says so."""
        for manifest in self.checkpointer.take_committed():
            self.telemetry.record_checkpoint(manifest)
            for fault in self.cfg.faults:
                if fault.kind == "corrupt-checkpoint" and fault.fires(rank=0, step=manifest["step"], generation=self.cfg.generation):
                    damage(manifest)

    def exchange_step_facts(self, loss_sum: torch.Tensor, seconds: float) -> tuple[float, bool, list[float]]:
        """One small all-reduce per step: global loss, any rank asked to stop, every rank's time."""
        world = self.env.world_size
        facts = torch.zeros(2 + world, dtype=torch.float64)
        facts[0] = loss_sum
        facts[1] = float(self.stop.is_set())
        facts[2 + self.env.rank] = seconds
        self.telemetry.update(activity="syncing")
        dist.all_reduce(facts)
        loss = facts[0].item() / (self.cfg.data.global_batch * self.cfg.data.seq_len)
        return loss, bool(facts[1] > 0), facts[2:].tolist()

    def log_step(self, loss: float, seconds: float, rate: float, stall: float | None) -> None:
        """Rank 0 appends one JSON line per step to the step log, when one is configured."""
        if self.env.rank != 0 or not self.cfg.step_log:
            return
        line = {"step": self.step, "loss": loss, "seconds": seconds, "tokensPerSecond": rate, "generation": self.cfg.generation, "time": time.time()}
        if stall is not None:
            line["checkpointStallSeconds"] = stall
        with Path(self.cfg.step_log).open("a") as f:
            f.write(json.dumps(line) + "\n")

