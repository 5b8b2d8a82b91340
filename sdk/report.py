"""The step reporter: a user program's steps in the same ``/status`` and ``/metrics`` as the trainer's.

``Reporter.report(step, loss, tokens=...)`` is one small all-reduce (float64, its own gloo
group) that gathers every rank's step time, compute, wait and busy seconds and tokens, sums
the losses and carries any rank's stop request. Rank 0 then serves what the controller
reads from the built-in trainer: ``step``, ``loss`` (the mean over ranks), ``tokensPerSecond``,
``stepSeconds`` and ``stepTimings`` (the straggler detector's input), the last committed
checkpoint, and appends the same line to the step log. The progress deadline, restarts and
straggler detection therefore work unchanged (``workers/telemetry.py`` serves it all).

Section times: what the program marks with ``section("compute")`` and
``section("communication")``; unmarked, the whole step counts as compute (its CPU time as
busy). Injected rank faults (``shardwright run --inject``) strike here as in the trainer.
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
import secrets
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from shardwright.workers.config import TERMINATION_MESSAGE_ENV, RankEnv, WorkerConfig
from shardwright.workers.faults import strike
from shardwright.workers.telemetry import Telemetry
from shardwright.workers.timing import SCORE_WINDOW, THROUGHPUT_WINDOW, per_sample, relative_scores
from shardwright.workers.usercommand import METRICS_ENV

#: Section names a program may mark; ``communication`` is reported as the trainer's ``wait``.
SECTION_NAMES = ("compute", "communication")
#: Per-rank values in one report's all-reduce: seconds, compute, wait, busy, tokens.
_FIELDS = 5


class Reporter:
    """Serves this rank's telemetry and gathers every rank's step facts once per step."""

    def __init__(self, cfg: WorkerConfig, env: RankEnv, stop: threading.Event) -> None:
        self.cfg, self.env, self.stop = cfg, env, stop
        self.telemetry = Telemetry(
            job=cfg.job, namespace=cfg.namespace, rank=env.rank, world_size=env.world_size,
            generation=cfg.generation, layout=cfg.parallel.layout, total_steps=cfg.optim.steps,
        )
        # Without a token (a rank started by hand) a random one: /status answers nobody.
        self.telemetry.serve(env.telemetry_port if env.telemetry_port is not None else cfg.telemetry_port,
                             token=env.token or secrets.token_urlsafe(32))
        self.group = dist.new_group(backend="gloo")  # never queued behind the program's own collectives
        self.timings: collections.deque[dict[str, Any]] = collections.deque(maxlen=cfg.timing_history)
        self.ends: collections.deque[float] = collections.deque(maxlen=THROUGHPUT_WINDOW + 1)
        self.marked = dict.fromkeys(SECTION_NAMES, 0.0)
        self.marked_busy = 0.0
        self.carried_wait = 0.0  # the last report's all-reduce wait, counted in the next step
        self.stall: float | None = None
        self.step = self.start = 0
        #: (step, mean loss over ranks) of the last step reported: a checkpoint of it keeps the loss.
        self.reported: tuple[int, float] | None = None
        self.stopping = False
        self.finished = False
        self.restart_clock()

    def restart_clock(self) -> None:
        """The next step's time counts from now (after a load, a report or a checkpoint)."""
        self.began, self.cpu_began = time.monotonic(), time.thread_time()
        if not self.ends:
            self.ends.append(self.began)

    def begin(self, step: int, resumed: int | None, rejected: list[dict[str, Any]], *, loss: float | None = None) -> None:
        """Training starts after ``step`` steps (a checkpoint loaded, or 0); ``loss``: that
        checkpoint's, reported until a step is."""
        self.step = self.start = step
        self.telemetry.update(state="running", step=step, loss=loss, resumedFrom=resumed, rejectedCheckpoints=rejected, activity="computing")
        self.restart_clock()

    @contextlib.contextmanager
    def section(self, name: str) -> Iterator[None]:
        if name not in SECTION_NAMES:
            raise ValueError(f"section {name!r}: allowed: {', '.join(SECTION_NAMES)}")
        began, cpu = time.monotonic(), time.thread_time()
        try:
            yield
        finally:
            self.marked[name] += time.monotonic() - began
            if name == "compute":
                self.marked_busy += time.thread_time() - cpu

    def report(self, step: int, loss: float, tokens: int | None = None) -> bool:
        """Step ``step`` is done with this rank's ``loss`` (and ``tokens`` trained); collective.
        Returns True when a rank was asked to stop (every rank returns the same)."""
        seconds, cpu = time.monotonic() - self.began, time.thread_time() - self.cpu_began
        if any(self.marked.values()):
            compute, wait, busy = self.marked["compute"], self.marked["communication"], self.marked_busy
        else:
            compute, wait, busy = seconds, 0.0, cpu
        self.step = step
        stretched, busy = self.inject_faults(compute, busy)
        seconds, compute = seconds + stretched - compute, stretched  # an injected slowdown is part of the step
        world, rank = self.env.world_size, self.env.rank
        facts = torch.zeros(2 + world * _FIELDS, dtype=torch.float64)
        facts[0], facts[1] = float(self.stop.is_set()), float(loss)
        rows = facts[2:].view(world, _FIELDS)
        rows[rank] = torch.tensor([seconds, compute, wait + self.carried_wait, busy, float(tokens or 0)], dtype=torch.float64)
        self.telemetry.update(activity="syncing")
        synced = time.monotonic()
        dist.all_reduce(facts, group=self.group)
        ended = time.monotonic()
        self.carried_wait = ended - synced
        self.marked, self.marked_busy = dict.fromkeys(SECTION_NAMES, 0.0), 0.0
        self.record(step, facts[1].item() / world, rows.tolist(), ended)
        self.stopping = bool(facts[0] > 0)
        self.telemetry.update(activity="computing")
        self.restart_clock()
        return self.stopping

    def record(self, step: int, loss: float, rows: list[list[float]], ended: float) -> None:
        """Publish one step: metrics, ``/status`` (rank 0: every rank's timings) and the step log."""
        seconds, compute, wait, busy, tokens = (list(col) for col in zip(*rows))
        samples = [int(t) or 1 for t in tokens]  # tokens are the work share; unreported: even
        self.ends.append(ended)
        rate = sum(tokens) * (len(self.ends) - 1) / max(self.ends[-1] - self.ends[0], 1e-9)
        rank = self.env.rank
        self.reported = (step, loss)
        self.telemetry.record_step(step=step, loss=loss, seconds=seconds[rank], tokens=int(tokens[rank]),
                                   tokens_per_second=rate, step_seconds=seconds, checkpoint_stall=self.stall)
        self.telemetry.record_sections({"compute": compute[rank], "wait": wait[rank]})
        timing = {"step": step, "compute": compute, "busy": busy, "wait": wait, "samples": samples}
        self.timings.append(timing)
        recent = [per_sample(t["busy"], t["samples"]) for t in list(self.timings)[-SCORE_WINDOW:]]
        self.telemetry.record_score(relative_scores(recent)[rank])
        if rank != 0:
            self.stall = None
            return
        self.telemetry.update(sections=[{"compute": c, "wait": w} for c, w in zip(compute, wait)],
                              stepTimings=list(self.timings), samples=samples)
        if self.cfg.step_log:
            line = {"step": step, "loss": loss, "seconds": seconds[rank], "tokensPerSecond": rate,
                    "generation": self.cfg.generation, "time": time.time(), "rankCompute": compute,
                    "rankBusy": busy, "rankWait": wait, "samples": samples}
            if self.stall is not None:
                line["checkpointStallSeconds"] = self.stall
            with Path(self.cfg.step_log).open("a") as f:
                f.write(json.dumps(line) + "\n")
        self.stall = None

    def inject_faults(self, compute: float, busy: float, during: str | None = None) -> tuple[float, float]:
        """Carry out this config's rank faults at this step, as the trainer does
        (``workers/faults.strike``): ``slow`` stretches the step, ``kill`` exits abruptly,
        ``hang`` stops progress. Returns the compute and busy seconds as stretched."""
        factor = strike(self.cfg.faults, rank=self.env.rank, step=self.step, generation=self.cfg.generation,
                        start=self.start, during=during, on_hang=lambda: self.telemetry.update(activity="hung"))
        if factor > 1.0:
            time.sleep((factor - 1.0) * compute)
        return compute * factor, busy * factor

    def finish(self) -> None:
        """The final state (``complete`` after the last step, else ``stopped``), the report and
        metrics the rank's runner reads back, and the server closed."""
        if self.finished:
            return
        self.finished = True
        self.telemetry.update(state="complete" if self.step >= self.cfg.optim.steps else "stopped")
        with contextlib.suppress(OSError):  # every rank its own files (workers/usercommand.py)
            if path := os.environ.get(TERMINATION_MESSAGE_ENV):
                Path(path).write_text(self.telemetry.termination_message())
            if path := os.environ.get(METRICS_ENV):
                Path(path).write_text(self.telemetry.metrics_text())
        self.telemetry.close()
