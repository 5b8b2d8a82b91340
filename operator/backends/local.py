"""The embedded default: every rank is a Ray actor on this machine.

Each actor is one process; it receives the torch environment contract (``RANK``,
``MASTER_PORT``, ...) and runs the worker entry point *by name*, so torch is imported in
rank processes, never in the process that runs the controller. Ray tells us when a rank
dies (``ActorDiedError``) or raises (``RayTaskError``) within milliseconds; the ranks' own
collectives time out after ``WorkerConfig.collective_timeout_s``, far below torch's default.

The driver of a ``runtime: ray`` generation on Kubernetes (``rayhead.py``, in the head pod)
runs the same actors on the generation's worker pods: ``launch`` with slots pinned to pods.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import json
import os
import sys
import threading
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import ray
from ray.exceptions import RayActorError, RayTaskError

from shardwright.operator.api import RankState
from shardwright.operator.backends import dataplane
from shardwright.operator.backends.ports import free_port
from shardwright.operator.backends.probe import checkpoint_refs, fetch_text, progress_from_status, request_json
from shardwright.operator.controller import (
    Observed,
    RankObservation,
    SetShares,
    StartGeneration,
    StopGeneration,
)
from shardwright.workers.config import RankEnv, WorkerConfig

#: The worker entry point every rank runs: ``module:function(config_json, env, stop)``.
ENTRY = "shardwright.workers.train:main"
#: The entry point of a job with ``spec.workers[].command``: the user's program as a child
#: process with the rank's environment (stopped with SIGTERM, then killed, by its PID).
COMMAND_ENTRY = "shardwright.workers.usercommand:main"
#: Seconds ``lose_ranks`` waits for Ray to confirm the killed ranks are gone.
LOSS_TIMEOUT_S = 10.0
#: Why a rank whose process ended failed (its peers fail with errors of their own).
RANK_DIED = "rank process died (killed, crashed or its host lost)"


@ray.remote(num_cpus=0, max_concurrency=2)
class RankActor:
    """One rank process, reusable across generations.

    ``max_concurrency=2`` lets ``request_stop`` reach a running ``run``. A process whose
    run ended (success, or an exception such as a peer's broken connection) still has
    torch imported and serves the next generation, so a restart starts no new process
    for the ranks that survived.
    """

    def __init__(self) -> None:
        self.stop_event = threading.Event()

    def warm(self) -> int:
        """Import the worker entry point (torch) ahead of need; returns the process id."""
        import importlib

        importlib.import_module(ENTRY.split(":")[0])
        return os.getpid()

    def run(self, entry: str, config_json: str, environ: dict[str, str], log_path: str | None = None) -> dict[str, Any]:
        """Run the entry point; with ``log_path``, the process's output goes to that file
        (appended) while it runs, so a rank's output is kept beside its job, not only in
        Ray's session directory."""
        import importlib

        os.environ.update(environ)
        self.stop_event = threading.Event()
        module, func = entry.split(":")
        with _output_to(log_path):
            env = RankEnv.from_environ(environ)
            generation = json.loads(config_json).get("generation")
            print(f"rank {env.rank}/{env.world_size}: generation {generation} starts (process {os.getpid()})", flush=True)
            try:
                result = getattr(importlib.import_module(module), func)(config_json, env, self.stop_event)
            except BaseException:
                traceback.print_exc()
                raise
            print(f"rank {env.rank}/{env.world_size}: {result.get('state')} at step {result.get('step')}", flush=True)
            return result

    def request_stop(self) -> None:
        self.stop_event.set()


@dataclasses.dataclass(frozen=True)
class RankSlot:
    """Where one rank runs: its torch environment, the host its telemetry answers on, and
    the Ray resources its actor needs (a node's custom resource pins it there; none: any
    node, here this machine)."""

    env: RankEnv
    host: str = "127.0.0.1"
    resources: dict[str, float] = dataclasses.field(default_factory=dict)


def local_slots(ranks: int) -> list[RankSlot]:
    """Ranks on this machine: loopback rendezvous, a free telemetry port each."""
    master_port = free_port()
    return [
        RankSlot(RankEnv(rank=r, world_size=ranks, local_rank=r, master_addr="127.0.0.1", master_port=master_port, telemetry_port=free_port()))
        for r in range(ranks)
    ]


@dataclasses.dataclass
class _Rank:
    actor: Any
    future: Any
    #: ``http://host:port`` of the rank's telemetry.
    url: str
    state: RankState = RankState.RUNNING
    message: str = ""
    #: What the rank's entry point returned (its final /status), once it succeeded.
    result: dict[str, Any] | None = None
    #: ``ray.kill`` was sent: the process is going even if its run ends first (never reuse it).
    killed: bool = False
    #: The process ended without its run raising (see ``RankObservation.died``).
    died: bool = False


@dataclasses.dataclass(frozen=True)
class LocalSettings:
    """Read once by the CLI and passed down."""

    #: A folder, or an ``s3://`` URI (listed with this process's AWS environment).
    checkpoint_dir: Path | str
    #: Ray cluster to join; None starts a private one for this run.
    ray_address: str | None = None
    #: CPUs Ray may schedule on; ranks take none, so this only bounds Ray's own tasks.
    num_cpus: int | None = None
    #: Folder of the ranks' output files (``rank-N.log``, appended); None: Ray's logs only.
    log_dir: Path | None = None


class LocalRayBackend:
    def __init__(self, settings: LocalSettings, token: str | None = None) -> None:
        self.settings = settings
        #: The ranks' telemetry token (``/status``, ``/control``): the pod's on Kubernetes
        #: (``runtime: ray``), else made here, as only this process asks them.
        self.token = token or dataplane.new_token()
        self.generations: dict[int, list[_Rank]] = {}
        #: Live rank processes with no run: ranks whose run returned, and a warm spare.
        self.idle: list[Any] = []

    def connect(self) -> None:
        """Join the Ray cluster (or start a private one) if not done yet."""
        if not ray.is_initialized():
            ray.init(
                address=self.settings.ray_address,
                num_cpus=self.settings.num_cpus,
                include_dashboard=False,
                log_to_driver=False,
                configure_logging=False,
            )
            # Ray's driver prints the raylet's notice of every dead worker, coloured, even
            # into a pipe; a rank's death is our own RankFailed event (and its log file).
            # The flag is the one Ray's debugger turns the driver's log printing off with.
            ray._private.worker._worker_logs_enabled = False

    def start(self, action: StartGeneration) -> None:
        self.launch(action.generation, action.config, local_slots(action.plan.world_size))

    def launch(self, generation: int, config: WorkerConfig, slots: list[RankSlot]) -> None:
        """Run every rank of ``generation``, rank i in ``slots[i]``. Unpinned ranks reuse idle
        rank processes, and a spare is kept for the rank a failure takes down; pinned ranks
        (``runtime: ray`` pods, see rayhead.py) get fresh actors on their node."""
        self.connect()
        config_json = config.model_dump_json()
        log_dir = self.settings.log_dir
        if log_dir is not None:
            log_dir.mkdir(parents=True, exist_ok=True)
        ranks = []
        for slot in slots:
            actor = self.idle.pop() if self.idle and not slot.resources else _new_actor(slot.resources)
            url = f"http://{slot.host}:{slot.env.telemetry_port}"
            log = str(log_dir.resolve() / f"rank-{slot.env.rank}.log") if log_dir is not None else None
            environ = slot.env.model_copy(update={"token": self.token}).to_environ()
            entry = ENTRY if config.command is None else COMMAND_ENTRY
            ranks.append(_Rank(actor, actor.run.remote(entry, config_json, environ, log), url))
        self.generations[generation] = ranks
        if not self.idle and not any(slot.resources for slot in slots):
            self.idle.append(_new_actor())

    def stop(self, action: StopGeneration) -> None:
        for rank in self.generations.get(action.generation, []):
            if rank.state is RankState.RUNNING:
                if action.graceful:
                    rank.actor.request_stop.remote()
                else:
                    ray.kill(rank.actor, no_restart=True)
                    rank.killed = True

    def set_shares(self, action: SetShares) -> None:
        """Hand new work shares to rank 0 (``POST /control``); it tells the others in the next
        step-facts all-reduce and every rank switches at the same step. Best effort: the
        controller repeats this until rank 0's ``/status`` shows the shares in effect."""
        ranks = self.generations.get(action.generation)
        if ranks and ranks[0].state is RankState.RUNNING:
            request_json(f"{ranks[0].url}/control", {"dataShares": list(action.shares)}, token=self.token)

    def lose_ranks(self, generation: int, count: int) -> None:
        """End the highest ``count`` ranks of ``generation`` as if their host died; returns
        once Ray reports them dead, so the next observation sees the loss."""
        lost = [r for r in self.generations.get(generation, [])[-count:] if r.state is RankState.RUNNING]
        for rank in lost:
            ray.kill(rank.actor, no_restart=True)
            rank.killed = True
        ray.wait([r.future for r in lost], num_returns=len(lost), timeout=LOSS_TIMEOUT_S)

    def observe(self, now: datetime.datetime) -> Observed:
        observations = []
        newest = max(self.generations, default=None)
        progress = None
        for generation, ranks in self.generations.items():
            self._collect(ranks)
            for i, r in enumerate(ranks):
                # Only the current generation's live ranks are asked what they are doing.
                live = generation == newest and r.state is RankState.RUNNING
                report = request_json(f"{r.url}/status", token=self.token) if live else None
                observations.append(RankObservation(
                    generation, i, r.state, message=r.message, node="localhost", died=r.died,
                    activity=(report or {}).get("activity"),
                ))
                if generation == newest and i == 0:  # rank 0's report (or final status) is the job's progress
                    status = r.result or report
                    progress = progress_from_status(status, generation) if status else None
        return Observed(
            now=now,
            ranks=tuple(observations),
            progress=progress,
            checkpoints=checkpoint_refs(self.settings.checkpoint_dir),
        )

    def _collect(self, ranks: list[_Rank]) -> None:
        running = [r for r in ranks if r.state is RankState.RUNNING]
        if not running:
            return
        done, _ = ray.wait([r.future for r in running], num_returns=len(running), timeout=0)
        for rank in running:
            if rank.future not in done:
                continue
            try:
                rank.result = ray.get(rank.future)
                rank.state = RankState.SUCCEEDED
            except RayTaskError as e:
                cause = e.cause if e.cause is not None else e
                rank.state, rank.message = RankState.FAILED, f"{type(cause).__name__}: {cause}"
                rank.died = getattr(cause, "died", False)  # a user command killed, not failing on its own
            except RayActorError:
                rank.state, rank.message, rank.died = RankState.FAILED, RANK_DIED, True
                continue
            self._retire(rank)

    def _retire(self, rank: _Rank) -> None:
        """Keep the process of a run that returned for the next generation; end one whose run
        raised. A failed run can leave torch.distributed state behind: a failed
        ``init_process_group`` has already taken a process-group name, so every later group
        in that process is named one off its peers' and their rendezvous never meets."""
        if rank.killed:
            return
        if rank.state is RankState.SUCCEEDED:
            self.idle.append(rank.actor)
        else:
            ray.kill(rank.actor, no_restart=True)
            rank.killed = True

    def scrape_metrics(self) -> str:
        """The Prometheus text of every rank of the newest generation, concatenated: a running
        rank's scrape, or the last text of a rank whose run returned (its server is gone)."""
        if not self.generations:
            return ""
        texts = []
        for rank in self.generations[max(self.generations)]:
            if rank.state is RankState.RUNNING:
                texts.append(fetch_text(f"{rank.url}/metrics") or "")
            elif rank.result is not None:
                texts.append(rank.result.get("metrics") or "")
        return "".join(texts)

    def close(self) -> None:
        for ranks in self.generations.values():
            for rank in ranks:
                if rank.state is RankState.RUNNING:
                    ray.kill(rank.actor, no_restart=True)
        for actor in self.idle:
            ray.kill(actor, no_restart=True)
        if ray.is_initialized():
            ray.shutdown()


@contextlib.contextmanager
def _output_to(path: str | None) -> Iterator[None]:
    """Send this process's stdout and stderr (the file descriptors: torch's and gloo's C++
    output too) to ``path`` while the block runs; nothing changes for None."""
    if path is None:
        yield
        return
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with open(path, "a") as log:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
    try:
        yield
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        os.close(saved[0])
        os.close(saved[1])


def _new_actor(resources: dict[str, float] | None = None) -> Any:
    actor = RankActor.options(resources=resources or {}).remote()
    actor.warm.remote()  # may overlap a first run (two threads): the import lock serialises them
    return actor
