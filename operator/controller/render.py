"""Render the per-generation WorkerConfig from a job's spec and its plan."""

from __future__ import annotations

import dataclasses

from shardwright.operator.api import CheckpointRef, TrainingJobSpec
from shardwright.operator.planner import Plan
from shardwright.workers.faults import Fault
from shardwright.workers.config import (
    CheckpointConfig,
    DataConfig,
    EvalConfig,
    ExportConfig,
    OptimConfig,
    ParallelConfig,
    WorkerConfig,
)


@dataclasses.dataclass(frozen=True)
class JobRef:
    """Which object is reconciled, and where its checkpoints live (resolved by the caller)."""

    name: str
    namespace: str
    checkpoint_dir: str
    #: metadata.generation of the object, echoed into conditions' observedGeneration.
    object_generation: int | None = None
    telemetry_port: int = 0
    #: Where rank 0 appends its per-step log; None: no log.
    step_log: str | None = None
    #: Faults injected into the ranks (``shardwright run --inject``); empty in production.
    faults: tuple[Fault, ...] = ()
    #: A restarted generation loads the newest checkpoint committed in storage when it is
    #: newer than the one the controller knows: on a cluster the controller learns commits
    #: from rank 0's probes and final report, which a killed rank 0 or a NetworkPolicy stop.
    resume_newest: bool = False
    #: The job's uid, recorded in its checkpoints' manifests (``resume_newest`` loads only those).
    uid: str | None = None


def worker_config(
    job: JobRef,
    spec: TrainingJobSpec,
    plan: Plan,
    generation: int,
    resume_from: CheckpointRef | None,
) -> WorkerConfig:
    data, training = spec.data, spec.training
    return WorkerConfig(
        job=job.name,
        namespace=job.namespace,
        generation=generation,
        model=spec.model.resolve(),
        data=DataConfig(
            source=str(data.source),
            task=str(data.task),
            path=data.path,
            seq_len=data.seq_len,
            global_batch=data.global_batch,
            micro_batch=data.micro_batch,
            seed=data.seed,
            field=data.field,
            dtype=data.dtype,
            tokenizer=spec.model.from_,
            validation_path=data.validation.path if data.validation else None,
            validation_fraction=data.validation.fraction if data.validation else 0.0,
        ),
        optim=OptimConfig(
            steps=training.steps,
            lr=training.lr,
            warmup_steps=training.warmup_steps,
            weight_decay=training.weight_decay,
            grad_clip=training.grad_clip,
            seed=training.seed,
            precision=training.precision,
        ),
        parallel=ParallelConfig(
            data=plan.dims.data,
            sequence=plan.dims.sequence,
            sequence_kind=str(spec.parallelism.sequence.kind),
            data_shares=plan.data_shares,
        ),
        checkpoint=CheckpointConfig(
            dir=job.checkpoint_dir,
            interval_steps=spec.checkpoint.interval_steps,
            keep=spec.checkpoint.keep,
            async_save=spec.checkpoint.async_,
            resume_from=resume_from.uri if resume_from else None,
            # Not generation 1: a job created again under an old name starts afresh.
            resume_newest=job.resume_newest and generation > 1,
            owner=job.uid,
            endpoint=spec.checkpoint.endpoint,
            credentials_secret=spec.checkpoint.credentials_secret,
            volume_claim=spec.checkpoint.volume_claim,
        ),
        lora=training.lora.resolve() if training.lora else None,
        export=ExportConfig(dir=spec.export.dir or f"{job.checkpoint_dir.rstrip('/')}/export", dtype=spec.export.dtype)
        if spec.export else None,
        evaluation=EvalConfig(interval_steps=spec.evaluation.interval_steps, samples=spec.evaluation.samples)
        if spec.evaluation else None,
        telemetry_port=job.telemetry_port,
        step_log=job.step_log,
        # The straggler detector judges each step against the window before it.
        timing_history=max(64, 2 * spec.straggler_policy.window + spec.straggler_policy.min_steps),
        faults=job.faults,
        # Validation makes every group name the same program (operator/api/command.py).
        command=tuple(spec.workers[0].command) if spec.workers[0].command else None,
    )
