"""What ``shardwright run`` shows a person: a progress bar, events, and a closing summary.

On a terminal a tqdm bar shows step, loss and tokens/s; elsewhere (CI, a pipe) a plain
line is printed every tenth of the run, so logs stay readable. Output is only a view: when
its reader goes (``shardwright run ... | head -3``) the run goes on, and its files say how
it ended.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from tqdm import tqdm

from shardwright.operator.api import TrainingJob, TrainingJobStatus
from shardwright.operator.controller import Event


class Console:
    def __init__(self, job: TrainingJob, workdir: Path, *, total_steps: int, progress_bar: bool) -> None:
        self.name = f"{job.metadata.namespace}/{job.metadata.name}"
        self.workdir = workdir
        self.total = total_steps
        self.step_log = workdir / "steps.jsonl"
        #: Where this invocation's lines start in the step log (earlier runs are above).
        self.log_offset = self.step_log.stat().st_size if self.step_log.exists() else 0
        self.bar = tqdm(total=total_steps, unit="step", dynamic_ncols=True, file=sys.stderr) if progress_bar and sys.stderr.isatty() else None
        self.last_line_step = -1
        self.events = (workdir / "events.jsonl").open("a")

    def note(self, text: str) -> None:
        self._write(text)

    def event(self, event: Event) -> None:
        record = {"time": time.time(), "type": event.type, "reason": event.reason, "message": event.message}
        self.events.write(json.dumps(record) + "\n")
        self.events.flush()
        self._write(f"{event.type:<7} {event.reason}: {event.message}")

    def progress(self, status: TrainingJobStatus) -> None:
        loss = f"{status.loss:.4f}" if status.loss is not None else "-"
        rate = f"{status.tokens_per_second:,.0f}" if status.tokens_per_second else "-"
        if self.bar is not None:
            self.bar.n = status.step
            self.bar.set_postfix_str(f"loss={loss} tok/s={rate} gen={status.generation} {status.phase}", refresh=True)
            return
        every = max(self.total // 10, 1)
        if status.step // every != self.last_line_step // every and status.step:
            self.last_line_step = status.step
            held_out = f"  held-out loss {status.evaluation.loss:.4f} (step {status.evaluation.step})" if status.evaluation else ""
            self._write(f"step {status.step}/{self.total}  loss {loss}{held_out}  tokens/s {rate}  generation {status.generation}")

    def summary(self, status: TrainingJobStatus, wall_seconds: float, checkpoint_dir: Path | str) -> None:
        first, last = self._loss_span()
        ckpt = status.last_checkpoint
        lines = [
            f"TrainingJob {self.name}: {status.phase}",
            f"  steps       {status.step}/{self.total} (generation {status.generation}, restarts {status.restarts})",
            f"  loss        {_fmt(last)} (first step of this run: {_fmt(first)})",
            f"  tokens/s    {status.tokens_per_second:,.0f}" if status.tokens_per_second else "  tokens/s    -",
            *([f"  held-out    loss {ev.loss:.4f}, perplexity {ev.perplexity:.3f} (step {ev.step})"] if (ev := status.evaluation) else []),
            f"  wall time   {wall_seconds:.1f} s",
            f"  checkpoints {checkpoint_dir}" + (f" (last committed: step {ckpt.step})" if ckpt else " (none)"),
            f"  status      {self.workdir / 'status.json'}",
            f"  step log    {self.step_log}",
            f"  metrics     {self.workdir / 'metrics.prom'} (last scrape of every rank)",
        ]
        if status.phase == "Suspended":
            lines.append("  Run the same command again to resume from the last checkpoint.")
        _print("\n".join(lines), sys.stdout)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        self.events.close()

    def _loss_span(self) -> tuple[float | None, float | None]:
        if not self.step_log.exists():
            return None, None
        with self.step_log.open() as f:
            f.seek(self.log_offset)
            losses = [json.loads(line)["loss"] for line in f if line.strip()]
        return (losses[0], losses[-1]) if losses else (None, None)

    def _write(self, text: str) -> None:
        if self.bar is not None:
            self.bar.write(text, file=sys.stderr)
        else:
            _print(text, sys.stderr)


def _print(text: str, stream) -> None:
    """Print and flush; if the reader has gone (a closed pipe), send the stream's further
    output to /dev/null instead of ending the run."""
    try:
        print(text, file=stream, flush=True)
    except BrokenPipeError:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, stream.fileno())
        os.close(devnull)


def _fmt(value: float | None) -> str:
    return f"{value:.4f}" if value is not None else "-"
