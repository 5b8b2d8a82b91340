"""``shardwright run``: the controller loop over the local Ray backend.

The same pure ``reconcile`` the Kubernetes handlers call decides what happens; this loop
observes the ranks, applies the actions, writes the status beside the checkpoints and
shows progress. Ctrl-C suspends the job (the ranks write a checkpoint and exit), so the
next ``shardwright run`` of the same file resumes; a second Ctrl-C stops at once.

Files under the work directory (``.shardwright/<namespace>/<name>`` by default; see
``jobdir.py``): ``job.yaml`` (the object run), ``status.json`` (the object's status),
``events.jsonl``, ``steps.jsonl`` (rank 0's loss per step), ``metrics.prom`` (last scrape
of every rank, the final one once they end), ``logs/rank-N.log``, ``checkpoints/``, and
``capacity``: write a number of ranks there while the job runs to change its rank budget
(the local stand-in for nodes coming and going; an elastic job resizes to fit).
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import signal
import time
from pathlib import Path

from shardwright.operator import jobdir
from shardwright.operator.api import Phase, TrainingJob, TrainingJobStatus
from shardwright.operator.backends.local import LocalRayBackend, LocalSettings
from shardwright.operator.console import Console
from shardwright.operator.controller import Event, JobRef, ReplaceRank, SetShares, StartGeneration, StopGeneration, reconcile
from shardwright.operator.planner import plan_for_capacity
from shardwright.workers import storage
from shardwright.workers.faults import CAPACITY_KINDS, Fault


@dataclasses.dataclass(frozen=True)
class RunSettings:
    workdir: Path
    #: Seconds between reconcile ticks.
    poll_seconds: float = 0.5
    #: Seconds between scrapes of every rank's /metrics into metrics.prom.
    scrape_seconds: float = 2.0
    ray_address: str | None = None
    progress_bar: bool = True
    #: Ranks this machine offers the job (the local "capacity"); None: what the spec asks.
    ranks: int | None = None
    #: Injected faults (``--inject``): rank faults go to the ranks, shrink/grow act here.
    faults: tuple[Fault, ...] = ()


@dataclasses.dataclass(frozen=True)
class RunOutcome:
    status: TrainingJobStatus
    wall_seconds: float
    interrupted: bool

    @property
    def exit_code(self) -> int:
        if self.status.phase is Phase.COMPLETE:
            return 0
        return 130 if self.interrupted else 1


def checkpoint_dir(job: TrainingJob, workdir: Path) -> Path | str:
    """The job's checkpoint folder: its uri (an s3:// one unchanged: the ranks and this process
    reach it with this process's AWS environment), else ``checkpoints`` in the work directory."""
    uri = job.spec.checkpoint.uri
    if uri is None:
        return workdir / "checkpoints"
    return uri if storage.is_url(uri) else Path(uri.removeprefix("file://"))


def run(job: TrainingJob, settings: RunSettings) -> RunOutcome:
    workdir = settings.workdir
    workdir.mkdir(parents=True, exist_ok=True)
    jobdir.JobDir(workdir).write_manifest(job.to_wire())
    ckpt_dir = checkpoint_dir(job, workdir)
    ref = JobRef(
        name=job.metadata.name, namespace=job.metadata.namespace, checkpoint_dir=str(ckpt_dir),
        object_generation=job.metadata.generation, step_log=str(workdir / "steps.jsonl"),
        faults=tuple(f for f in settings.faults if f.kind not in CAPACITY_KINDS),
    )
    capacity = _Capacity(settings.ranks, workdir / "capacity", [f for f in settings.faults if f.kind in CAPACITY_KINDS])
    backend = LocalRayBackend(LocalSettings(checkpoint_dir=ckpt_dir, ray_address=settings.ray_address, log_dir=jobdir.JobDir(workdir).log_dir))
    console = Console(job, workdir, total_steps=job.spec.training.steps, progress_bar=settings.progress_bar)
    interrupts = _Interrupts()
    spec, status = job.spec, None
    began = time.monotonic()
    last_scrape = 0.0
    try:
        with interrupts:
            while True:
                if interrupts.count and not spec.suspend:
                    spec = spec.model_copy(update={"suspend": True})
                    console.note("Interrupted: the ranks write a checkpoint and stop (Ctrl-C again to stop now)")
                if interrupts.count > 1:
                    break
                ranks = capacity.update(status, backend, console)  # before observing: a lost host shows now
                observed = backend.observe(datetime.datetime.now(datetime.timezone.utc))
                result = reconcile(ref, spec, plan_for_capacity(spec, ranks), status, observed)
                events = []
                for action in result.actions:
                    if isinstance(action, StartGeneration):
                        backend.start(action)
                    elif isinstance(action, StopGeneration):
                        backend.stop(action)
                    elif isinstance(action, SetShares):
                        backend.set_shares(action)
                    elif isinstance(action, ReplaceRank):
                        capacity.replace(spec, action, status, console)
                    elif isinstance(action, Event):
                        events.append(action)
                if result.status != status:
                    status = result.status
                    _write_json(workdir / "status.json", status.to_wire())
                console.progress(status)  # before the events: TrainingComplete follows the last step
                for event in events:
                    console.event(event)
                settled = status.phase.terminal or status.phase is Phase.SUSPENDED
                done = settled and not any(r.alive for r in observed.ranks) and not result.of_type(StopGeneration)
                # The last scrape is the ranks' final one (their servers have gone by then).
                if done or time.monotonic() - last_scrape > settings.scrape_seconds:
                    if metrics := backend.scrape_metrics():
                        (workdir / "metrics.prom").write_text(metrics)
                    last_scrape = time.monotonic()
                if done:
                    break
                time.sleep(settings.poll_seconds if result.requeue_after is None else min(settings.poll_seconds, result.requeue_after))
    finally:
        backend.close()
        console.close()
    outcome = RunOutcome(status, time.monotonic() - began, interrupted=interrupts.count > 0)
    console.summary(outcome.status, outcome.wall_seconds, ckpt_dir)
    return outcome


class _Capacity:
    """The rank budget: a setting, a file the user may edit, and shrink/grow injections."""

    def __init__(self, ranks: int | None, path: Path, faults: list[Fault]) -> None:
        self.ranks, self.path, self.pending = ranks, path, sorted(faults, key=lambda f: f.step)

    def update(self, status: TrainingJobStatus | None, backend: LocalRayBackend, console: Console) -> int | None:
        if self.path.exists():
            try:
                self.ranks = int(self.path.read_text().strip())
            except ValueError:
                console.note(f"{self.path}: not a number of ranks; ignored")
            self.path.unlink()
        # One change at a time, each once the previous one took effect: a slow poll that
        # sees the step jump past both a shrink and a grow must not apply them together.
        settled = status is not None and (self.ranks is None or 0 < status.world_size <= self.ranks)
        if settled and self.pending and status.step >= self.pending[0].step:
            fault = self.pending.pop(0)
            if fault.kind == "shrink":
                self.ranks = max(status.world_size - fault.ranks, 0)
                backend.lose_ranks(status.generation, fault.ranks)
                console.note(f"Injected: {fault.ranks} rank host(s) lost for good at step {status.step}")
            else:
                self.ranks = None
                console.note(f"Injected: capacity back at step {status.step}")
        return self.ranks


    def replace(self, spec, action: ReplaceRank, status: TrainingJobStatus | None, console: Console) -> None:
        """Locally a replaced rank's host is taken out of the budget when the job can run
        smaller (elastic); otherwise the next generation's fresh processes stand in for a
        replacement host, as a new node would on Kubernetes."""
        world = status.world_size if status else spec.world_size
        if spec.elastic is not None and plan_for_capacity(spec, world - 1) is not None:
            self.ranks = world - 1
            console.note(f"Rank {action.rank} dropped from the rank budget: {self.ranks} ranks from now on")
        else:
            console.note(f"Rank {action.rank} is replaced by a fresh rank process (the job is not elastic)")


def _write_json(path: Path, payload: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(payload, indent=1))
    tmp.replace(path)


class _Interrupts:
    """Counts Ctrl-C presses instead of raising, while the loop runs."""

    def __init__(self) -> None:
        self.count = 0
        self._previous = None

    def __enter__(self) -> _Interrupts:
        self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        signal.signal(signal.SIGINT, self._previous)

    def _handle(self, signum, frame) -> None:
        self.count += 1
