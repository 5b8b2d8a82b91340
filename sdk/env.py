"""``sdk.init()``: this rank's place and the job's settings, read once from the rank's environment.

A rank of a job with ``spec.workers[].command`` starts with the torch environment contract
(``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``), its telemetry
port and token, and the generation's ``WorkerConfig`` as JSON in ``SHARDWRIGHT_WORKER_CONFIG``
(``workers/usercommand.py`` sets them). ``init`` joins the process group with the job's
collective timeout, fixes threads and determinism as the built-in trainer does, starts the
step reporter (``/status``, ``/metrics``) and turns SIGTERM into a stop request.
"""

from __future__ import annotations

import atexit
import dataclasses
import datetime
import os
import signal
import threading

import torch
import torch.distributed as dist

from shardwright.workers import storage
from shardwright.workers.config import CONFIG_ENV, RankEnv, WorkerConfig

from .report import Reporter


@dataclasses.dataclass(frozen=True)
class Run:
    """What ``init`` found: this rank, its device, the generation's config and its reporter."""

    env: RankEnv
    config: WorkerConfig
    #: ``cuda:LOCAL_RANK`` where CUDA is available (process group: nccl), else the CPU (gloo).
    device: torch.device
    reporter: Reporter = dataclasses.field(repr=False)

    @property
    def rank(self) -> int:
        return self.env.rank

    @property
    def world_size(self) -> int:
        return self.env.world_size

    @property
    def local_rank(self) -> int:
        return self.env.local_rank

    @property
    def steps(self) -> int:
        """Optimizer steps the job trains for (``spec.training.steps``)."""
        return self.config.optim.steps

    @property
    def seed(self) -> int:
        """Seed of parameter initialisation (``spec.training.seed``)."""
        return self.config.optim.seed

    @property
    def data_seed(self) -> int:
        """Seed of the data stream (``spec.data.seed``)."""
        return self.config.data.seed

    @property
    def checkpoint_dir(self) -> str:
        return self.config.checkpoint.dir

    @property
    def checkpoint_interval(self) -> int:
        """Steps between checkpoints (``spec.checkpoint.intervalSteps``)."""
        return self.config.checkpoint.interval_steps

    @property
    def resume_step(self) -> int | None:
        """Step of the checkpoint the controller chose to resume from (None: a fresh start);
        ``sdk.checkpoint`` may load a newer one this job committed (``start_step`` says)."""
        path = self.config.checkpoint.resume_from
        return int(storage.name_of(path).split("-")[-1].split(".")[0]) if path else None

    @property
    def generation(self) -> int:
        return self.config.generation


_current: Run | None = None


def init(environ: dict[str, str] | None = None) -> Run:
    """Join the job: process group, threads, determinism, reporter; returns this rank's ``Run``."""
    global _current
    if _current is not None:
        return _current
    env_vars = os.environ if environ is None else environ
    if CONFIG_ENV not in env_vars:
        raise RuntimeError(f"{CONFIG_ENV} is not set: start this program as a job's spec.workers[].command "
                           "(shardwright run job.yaml, or a TrainingJob on Kubernetes)")
    config = WorkerConfig.model_validate_json(env_vars[CONFIG_ENV])
    env = RankEnv.from_environ(env_vars)
    torch.set_num_threads(config.threads)
    torch.use_deterministic_algorithms(config.deterministic)
    cuda = torch.cuda.is_available()
    device = torch.device(f"cuda:{env.local_rank}") if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    dist.init_process_group(
        "nccl" if cuda else "gloo",
        init_method=f"tcp://{env.master_addr}:{env.master_port}",
        rank=env.rank,
        world_size=env.world_size,
        timeout=datetime.timedelta(seconds=config.collective_timeout_s),
    )
    stop = threading.Event()
    # A stop request (suspend, a graceful restart): checkpoint at the next step, then exit 0.
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    _current = Run(env, config, device, Reporter(config, env, stop))
    atexit.register(_close)
    return _current


def current() -> Run:
    """The ``Run`` of this process; ``init`` must have been called."""
    if _current is None:
        raise RuntimeError("call shardwright.sdk.init() first")
    return _current


def _close() -> None:
    """At exit: the final report and the end of the process group (if the program kept it)."""
    if _current is not None:
        _current.reporter.finish()
    if dist.is_initialized():
        dist.destroy_process_group()
