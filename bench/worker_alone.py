"""The middle launcher of bench/overhead.py: Shardwright's own worker (``workers/train.py``,
with its telemetry server, step facts and step log) in ``torch.multiprocessing``, without
Ray, the controller or the warm spare. Between plain DDP and ``shardwright run`` it splits
the overhead into the worker's share and the orchestration's.

    python bench/worker_alone.py MANIFEST WORKDIR

Renders the worker config as ``shardwright run`` does for generation 1 and writes the step
log to ``WORKDIR/steps.jsonl``.
"""

from __future__ import annotations

import sys
import threading
from pathlib import Path

import torch.multiprocessing as mp
import yaml

from shardwright.operator.api import parse
from shardwright.operator.controller import JobRef, worker_config
from shardwright.operator.planner import plan_uniform
from shardwright.workers.config import RankEnv


def rank_main(rank: int, config_json: str, envs: list[RankEnv]) -> None:
    from shardwright.workers import train

    train.main(config_json, envs[rank], threading.Event())


def main() -> None:
    manifest, workdir = Path(sys.argv[1]), Path(sys.argv[2])
    job = parse(yaml.safe_load(manifest.read_text()))
    ref = JobRef(job.metadata.name, job.metadata.namespace, str(workdir / "checkpoints"), step_log=str(workdir / "steps.jsonl"))
    plan = plan_uniform(job.spec)
    config = worker_config(ref, job.spec, plan, 1, None)
    # The rank environments the local backend gives its actors (imported here: it imports
    # Ray, which the spawned ranks need not).
    from shardwright.operator.backends.local import local_slots

    envs = [slot.env for slot in local_slots(plan.world_size)]
    mp.spawn(rank_main, args=(config.model_dump_json(), envs), nprocs=len(envs), join=True)


if __name__ == "__main__":
    main()
