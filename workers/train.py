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

import collections
import contextlib
import datetime
import json
import os
import secrets
import threading
import time
from pathlib import Path
from typing import Any, Callable

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from . import data as data_mod
from . import stepfacts
from .checkpoint import Checkpointer, damage
from .config import TERMINATION_MESSAGE_ENV, RankEnv, WorkerConfig, softmax_kernel
from .evaluation import Evaluator
from .faults import strike
from .lora import apply_lora, reseed as reseed_dropout
from .mixers import SequenceContext
from .model import Transformer
from .batches import rank_batch, token_losses
from .optim import autocast, decay_groups, lr_at
from .packing import IGNORE
from .telemetry import Telemetry
from .stepfacts import SentFacts, StepFacts, facts_batch
from .timing import (
    COMPUTE, SCORE_WINDOW, SECTIONS, THROUGHPUT_WINDOW, GradientWaitHook, SectionTimer, per_sample, relative_scores,
)

def main(config: WorkerConfig | str, env: RankEnv | None = None, stop: threading.Event | None = None) -> dict[str, Any]:
    """Train one generation on this rank; returns the rank's summary."""
    cfg = WorkerConfig.model_validate_json(config) if isinstance(config, str) else config
    env = env or RankEnv.from_environ()
    if cfg.model.source:  # spec.model.from as a URI: fetched here, its config.json read (docs/models.md)
        from .hf.fetch import localize

        cfg = cfg.model_copy(update={"model": localize(cfg.model)})
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
            if (path := os.environ.get(TERMINATION_MESSAGE_ENV)) and env.local_rank == 0:
                # Read back from the pod's status: the operator learns the last step, loss and
                # checkpoint even when it can no longer reach this rank.
                with contextlib.suppress(OSError):
                    Path(path).write_text(trainer.telemetry.termination_message())
            # DDP's reducer holds the process group: let it go while the group is alive (a
            # gloo group destroyed from the reducer after destroy_process_group can hang).
            del trainer
    finally:
        dist.destroy_process_group()


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
        if cfg.model.source:  # spec.model.from: its weights, unless a checkpoint is resumed below
            from .hf.weights import load_weights  # safetensors, only for jobs that name a model

            load_weights(self.model, cfg.model.source)
        if cfg.lora:  # spec.training.lora: the weights above frozen, adapters trained (DDP syncs only those)
            apply_lora(self.model, cfg.lora, seed=cfg.optim.seed)
        self.ddp = DistributedDataParallel(self.model)
        self.timer = SectionTimer()
        #: Work shares in effect; the controller may change them at a step boundary.
        self.shares = par.data_shares
        self.facts_wait = 0.0  # the last wait for a step's facts, counted in the next step
        #: Steps the next facts all-reduce carries (see ``facts_batch``); one until measured.
        self.batch = 1
        # The step facts get their own communicator: their all-reduce overlaps the next
        # step's gradient all-reduce instead of queueing behind (or ahead of) it.
        self.facts_group = dist.new_group(backend="gloo")
        self.timings: collections.deque[dict[str, Any]] = collections.deque(maxlen=cfg.timing_history)
        #: Target tokens of the steps in the throughput window (one per interval of ``ends``).
        self.window_tokens: collections.deque[int] = collections.deque(maxlen=THROUGHPUT_WINDOW)
        self.optimizer = torch.optim.AdamW(
            decay_groups(self.model, cfg.optim.weight_decay), lr=cfg.optim.lr, betas=(0.9, 0.95), foreach=False,
        )
        self.data = data_mod.dataset(cfg.data, cfg.model.vocab_size)
        self.evaluator = Evaluator(cfg, self.model, self.ctx, self.dp_rank) if cfg.evaluation else None
        self.checkpointer = Checkpointer(cfg.checkpoint, layout=par.layout, generation=cfg.generation)
        self.telemetry = Telemetry(
            job=cfg.job, namespace=cfg.namespace, rank=env.rank, world_size=env.world_size,
            generation=cfg.generation, layout=par.layout, total_steps=cfg.optim.steps,
        )
        # Without a token (a rank started by hand) a random one: /status and /control answer nobody.
        self.telemetry.serve(env.telemetry_port if env.telemetry_port is not None else cfg.telemetry_port,
                             token=env.token or secrets.token_urlsafe(32))
        self.grad_wait = GradientWaitHook(on_last=lambda: self.telemetry.update(activity="syncing"))
        self.ddp.register_comm_hook(self.grad_wait, GradientWaitHook.hook)
        manifest, resumed, rejected = self.checkpointer.resume(self.model, self.optimizer)
        self.step = self.start_step = resumed or 0
        if manifest is not None:
            self.telemetry.record_checkpoint(manifest)
        # The loss of the step resumed at, until this generation trains one (none before step 1).
        self.telemetry.update(state="running", step=self.step, loss=(manifest or {}).get("loss"), resumedFrom=resumed, rejectedCheckpoints=rejected)
        self.telemetry.update(dataShares=list(self.shares) if self.shares else None)

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
        """Step until the last step or a stop request. Finished steps' facts travel in one
        all-reduce per batch of steps (:func:`facts_batch`) that overlaps the next batch's
        compute; a step is logged and reported once its facts are back, so ranks meet in
        the gradient all-reduce, and once a batch in this one."""
        total = self.cfg.optim.steps
        ends: collections.deque[float] = collections.deque([time.monotonic()], maxlen=THROUGHPUT_WINDOW + 1)
        stopped = False
        pending: list[StepFacts] = []
        sent: SentFacts | None = None
        if self.step < total:
            self.settle_buckets()
        while self.step < total and not stopped:
            began = time.monotonic()
            self.telemetry.update(activity="computing")
            loss_sum, targets = self.train_step()
            self.step += 1
            self.inject_rank_faults(self.timer.compute)
            step = StepFacts(self.step, time.monotonic() - began, self.samples_per_rank(), loss_sum.item(), self.take_sections(), targets)
            step.evaluation = self.evaluator.after(self.step) if self.evaluator else None
            if step.evaluation is not None:
                self.telemetry.record_evaluation(**step.evaluation.figures())
            pending.append(step)
            due = self.checkpointer.due(self.step, total)
            if len(pending) >= self.batch or self.step == total or due:
                posted = self.send_step_facts(pending)
                pending = []
                if sent is not None:
                    stopped = self.complete_step(sent, ends)
                sent = posted
            if stopped or due:
                saving = time.monotonic()
                self.checkpointer.save(self.step, self.model, self.optimizer, data_position=self.step * self.cfg.data.global_batch,
                                       loss=sent.last_loss())
                step.stall = time.monotonic() - saving
                self.inject_rank_faults(0.0, during="checkpoint")
            self.record_commits()
            step.ended, step.ended_wall = time.monotonic(), time.time()
            if due and sent is not None:  # every step up to a checkpoint is logged before the next can fail
                stopped = self.complete_step(sent, ends) or stopped
                sent = None
        if sent is not None:
            stopped = self.complete_step(sent, ends) or stopped
        self.checkpointer.wait()
        self.record_commits()
        state = "stopped" if stopped and self.step < total else "complete"
        if state == "complete" and self.cfg.export is not None and self.env.rank == 0:  # spec.export, after the final commit
            from .hf.export import DTYPES, export_to  # safetensors, only for jobs that export

            self.telemetry.update(activity="exporting")
            export_to(self.model, self.cfg.export.dir, dtype=DTYPES[self.cfg.export.dtype])
        self.telemetry.update(state=state)
        return {**self.telemetry.status(), "state": state, "metrics": self.telemetry.metrics_text()}

    def settle_buckets(self) -> None:
        """A zero-weighted forward and backward before the first step, so every real step
        all-reduces its gradients in DDP's rebuilt buckets. DDP puts every gradient in one
        bucket for its first iteration and re-buckets them in backward order afterwards; from
        three ranks on, gloo then sums a gradient in another order, so a generation resumed
        mid-run differed in the last bits from one that trained that step as a later iteration.
        Two ranks' sums commute: nothing to settle."""
        if self.env.world_size < 3:
            return
        first = data_mod.rank_slice(self.step, self.cfg.data, self.dp_rank, self.cfg.parallel.data, self.shares).micro_batches[0]
        batch = rank_batch(data_mod.collate(self.data, first), self.ctx)
        (self.ddp(batch.inputs, batch.positions, batch.segments).float().sum() * 0).backward()
        self.optimizer.zero_grad(set_to_none=True)

    def train_step(self) -> tuple[torch.Tensor, int]:
        """Forward and backward over this rank's micro-batches, then one optimizer step;
        returns this rank's loss sum and the global batch's target tokens (``StepFacts.targets``)."""
        cfg = self.cfg
        for group in self.optimizer.param_groups:
            group["lr"] = lr_at(self.step, cfg.optim)
        if cfg.lora:
            reseed_dropout(self.model, cfg.optim.seed, self.step, self.env.rank)
        part = data_mod.rank_slice(self.step, cfg.data, self.dp_rank, cfg.parallel.data, self.shares)
        timer = self.timer
        with timer.section("data"):
            batches = [rank_batch(data_mod.collate(self.data, indices), self.ctx) for indices in part.micro_batches]
            counted = self.count_targets(batches)
        # Each rank's loss is a sum over its target tokens divided by the global batch's count
        # of them, times the world size that DDP's gradient averaging divides by: the exact
        # global mean, however the samples are split over ranks and micro-batches.
        targets = scale = None
        loss_sum = torch.zeros((), dtype=torch.float64)
        for i, batch in enumerate(batches):
            last = i == len(batches) - 1
            with contextlib.nullcontext() if last else self.ddp.no_sync():
                with timer.section("forward"), autocast(cfg.optim.precision, self.model.embed.weight.device):
                    logits = self.ddp(batch.inputs, batch.positions, batch.segments)
                    loss = token_losses(logits, batch.targets)
                if targets is None:  # the count's all-reduce ran alongside the first forward
                    with timer.section("wait"):
                        targets = counted()
                    scale = self.env.world_size / targets
                self.grad_wait.last_ready = None
                began, cpu = time.monotonic(), time.thread_time()
                (loss * scale).backward()
                ended = time.monotonic()
                # With DDP syncing (last micro-batch), backward() returns only when every
                # rank's gradients are reduced: the part after our last bucket was ready is wait.
                ready = self.grad_wait.last_ready if last and self.grad_wait.last_ready is not None else ended
                timer.add("backward", ready - began)
                timer.add("wait", ended - ready)
                timer.busy += time.thread_time() - cpu  # waiting in gloo costs this thread no CPU
            loss_sum += loss.detach().double()
        with timer.section("optimizer"):
            if cfg.optim.grad_clip is not None:
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.optim.grad_clip)
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
        return loss_sum, targets

    def count_targets(self, batches: list[data_mod.Batch]) -> Callable[[], int]:
        """A function giving the global batch's target tokens that are not ``IGNORE``. Without
        documents that is every token (no communication); with them, every rank's count of
        its shards, summed by an all-reduce that overlaps the first forward."""
        if batches[0].segments is None:
            return lambda: self.cfg.data.global_batch * self.cfg.data.seq_len
        count = torch.tensor(sum(int((b.targets != IGNORE).sum()) for b in batches))
        work = dist.all_reduce(count, async_op=True)

        def wait() -> int:
            work.wait()
            if count.item() == 0:
                raise ValueError(f"step {self.step}: the global batch has no target tokens (every token is padding or a document's last)")
            return int(count.item())

        return wait

    def inject_rank_faults(self, compute_seconds: float, during: str | None = None) -> None:
        """Carry out the faults this config injects at this step (see workers/faults.py)."""
        factor = strike(self.cfg.faults, rank=self.env.rank, step=self.step, generation=self.cfg.generation,
                        start=self.start_step, during=during, on_hang=self.hang_begins)
        if factor > 1.0:  # a slow rank: every compute section takes ``factor`` times as long
            time.sleep((factor - 1.0) * compute_seconds)
            self.timer.stretch(factor)

    def hang_begins(self) -> None:
        """A hung rank's main thread stops, its checkpoint writer does not: the save in flight
        still commits (as it would anyway), and is published and damaged if a fault says so,
        before this thread stops. A save that fails is left to the restart, as a hang would."""
        self.telemetry.update(activity="hung")
        with contextlib.suppress(Exception):
            self.checkpointer.wait()
        self.record_commits()

    def record_commits(self) -> None:
        """Publish checkpoints committed since the last step; damage one if a fault says so."""
        for manifest in self.checkpointer.take_committed():
            self.telemetry.record_checkpoint(manifest)
            for fault in self.cfg.faults:
                if fault.kind == "corrupt-checkpoint" and fault.fires(rank=0, step=manifest["step"], generation=self.cfg.generation):
                    damage(manifest)

    def take_sections(self) -> list[float]:
        """This rank's section seconds of the step just finished, and its busy seconds; the
        last wait for step facts counts in the step that waited."""
        self.timer.add("wait", self.facts_wait)
        self.facts_wait = 0.0
        sections, busy = self.timer.take()
        return [sections[name] for name in SECTIONS] + [busy]

    def send_step_facts(self, steps: list[StepFacts]) -> SentFacts:
        """Start the facts all-reduce of a batch of steps (``stepfacts.send``)."""
        return stepfacts.send(steps, rank=self.env.rank, world=self.env.world_size, data=self.cfg.parallel.data,
                              stop=self.stop.is_set(), shares=self.telemetry.take_shares() if self.env.rank == 0 else None,
                              group=self.facts_group)

    def complete_step(self, sent: SentFacts, ends: collections.deque[float]) -> bool:
        """Wait for a batch's facts, then record, report and log its steps; True if a rank
        asked to stop. New shares apply from the step after the current one, on every rank
        alike."""
        world = self.env.world_size
        self.telemetry.update(activity="syncing")
        began = time.monotonic()
        sent.wait()
        self.facts_wait = time.monotonic() - began
        if (shares := sent.shares()) is not None:
            self.shares = shares
            self.telemetry.update(dataShares=list(self.shares), sharesSinceStep=self.step + 1)
        losses, seconds, sections = (t.tolist() for t in sent.rows())
        lines = []
        for step, loss_sum, step_seconds, step_sections in zip(sent.steps, losses, seconds, sections):
            loss = loss_sum / step.targets
            self.record_timings(step.number, step_sections, step.samples)
            ends.append(step.ended)
            self.window_tokens.append(step.targets)
            rate = sum(self.window_tokens) / max(ends[-1] - ends[0], 1e-9)
            self.telemetry.record_step(
                step=step.number, loss=loss, seconds=step.seconds, tokens=step.targets // world,
                tokens_per_second=rate, step_seconds=step_seconds, checkpoint_stall=step.stall,
            )
            lines.append(self.step_line(step, loss, rate, self.timings[-1]))
        self.report_timings(sections[-1])
        self.log_steps(lines)
        self.batch = facts_batch([max(row) for row in seconds])
        return sent.stop_requested()

    def samples_per_rank(self) -> list[int]:
        """Samples every rank trains on per step under the shares in effect (by global rank)."""
        par = self.cfg.parallel
        counts = data_mod.partition(self.cfg.data.global_batch, self.shares, par.data)
        return [counts[r // par.sequence] for r in range(par.world_size)]

    def record_timings(self, step: int, sections: list[list[float]], samples: list[int]) -> None:
        """Keep every rank's compute, busy and wait seconds of this step (rank 0 serves the
        recent ones to the controller's straggler detector)."""
        compute_at = [SECTIONS.index(name) for name in COMPUTE]
        compute = [sum(row[i] for i in compute_at) for row in sections]
        wait = [row[SECTIONS.index("wait")] for row in sections]
        busy = [row[len(SECTIONS)] for row in sections]
        self.timings.append({"step": step, "compute": compute, "busy": busy, "wait": wait, "samples": samples})
        self.telemetry.record_sections(dict(zip(SECTIONS, sections[self.env.rank])))

    def report_timings(self, sections: list[list[float]]) -> None:
        """After a batch of steps (its last step's ``sections``): this rank's straggler score
        over the recent steps, and on rank 0 the timings the controller reads. Once a batch,
        not once a step: the score's medians are a measurable part of a 12 ms step."""
        recent = [per_sample(t["busy"], t["samples"]) for t in list(self.timings)[-SCORE_WINDOW:]]
        self.telemetry.record_score(relative_scores(recent)[self.env.rank])
        if self.env.rank == 0:
            self.telemetry.update(
                sections=[dict(zip(SECTIONS, row)) for row in sections],
                stepTimings=list(self.timings), samples=self.timings[-1]["samples"],
            )

    def step_line(self, step: StepFacts, loss: float, rate: float, timing: dict[str, Any]) -> dict[str, Any]:
        """One step's line of the step log."""
        line = {
            "step": step.number, "loss": loss, "seconds": step.seconds, "tokensPerSecond": rate, "generation": self.cfg.generation,
            "time": step.ended_wall, "rankCompute": timing["compute"], "rankBusy": timing["busy"], "rankWait": timing["wait"],
            "samples": timing["samples"],
        }
        if step.stall is not None:
            line["checkpointStallSeconds"] = step.stall
        if step.evaluation is not None:
            line.update(step.evaluation.log_fields())
        return line

    def log_steps(self, lines: list[dict[str, Any]]) -> None:
        """Rank 0 appends a batch's JSON lines to the step log, when one is configured."""
        if self.env.rank != 0 or not self.cfg.step_log:
            return
        with Path(self.cfg.step_log).open("a") as f:
            f.write("".join(json.dumps(line) + "\n" for line in lines))

