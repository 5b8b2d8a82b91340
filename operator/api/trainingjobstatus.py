"""The ``TrainingJob`` status: what the operator writes back (phase, conditions, the running
generation, progress, checkpoints, ranks and stragglers); the CRD's status schema."""

from __future__ import annotations

from pydantic import Field

from .base import ApiModel, Condition
from .enums import Phase, RankState, StragglerAction
from .readmit import Readmit


class CheckpointRef(ApiModel):
    """A committed checkpoint: where it is and the layout it was written with."""

    step: int
    uri: str
    world_size: int
    layout: str = Field(description='Parallel layout at save time, e.g. "dp=2,sp=1".')


class RankStatus(ApiModel):
    rank: int
    state: RankState
    node: str | None = None
    step_seconds: float | None = None
    message: str | None = None


class StragglerStatus(ApiModel):
    """A rank flagged as a straggler in the current generation."""

    rank: int
    node: str | None = None
    score: float = Field(description="Relative speed: 1 is the fastest rank.")
    since_step: int = Field(description="Step at which the rank was flagged.")
    action: StragglerAction = Field(description="What was done so far: report, rebalance or replace.")
    self_score: float | None = Field(
        default=None, description="Speed against its own earlier steps (below 1: it slowed down during the run)."
    )


class EvaluationResult(ApiModel):
    """The last held-out evaluation (spec.evaluation): mean token cross-entropy and its exp."""

    step: int = Field(description="Optimizer steps done when it was taken.")
    loss: float = Field(description="Mean cross-entropy over the held-out samples' target tokens (nats).")
    perplexity: float = Field(description="exp(loss).")


class TrainingJobStatus(ApiModel):
    phase: Phase = Phase.PENDING
    conditions: list[Condition] = Field(default_factory=list)
    observed_generation: int | None = Field(
        default=None,
        description="metadata.generation of the spec that runs: a policy edit is observed at once, new "
        "replicas once a generation of that size starts.",
    )
    generation: int = Field(default=0, description="Run generation: one world size and plan.")
    world_size: int = 0
    replicas: int = Field(default=0, description="Pods of the current generation (the /scale subresource's status).")
    selector: str | None = Field(default=None, description="Label selector of the job's pods, for an HPA (/scale).")
    ready_ranks: int = 0
    plan: str | None = None
    step: int = 0
    loss: float | None = None
    tokens_per_second: float | None = None
    evaluation: EvaluationResult | None = Field(default=None, description="The last held-out evaluation (spec.evaluation).")
    last_checkpoint: CheckpointRef | None = None
    restarts: int = 0
    steps_lost: int = Field(default=0, description="Steps trained again after failures, in total.")
    rejected_checkpoints: list[int] = Field(
        default_factory=list, description="Steps of damaged checkpoints the loader skipped."
    )
    start_time: str | None = None
    last_progress_time: str | None = Field(default=None, description="When the step last advanced.")
    generation_start_time: str | None = None
    next_start_time: str | None = Field(default=None, description="Backoff: restart not before.")
    completion_time: str | None = None
    ranks: list[RankStatus] = Field(default_factory=list)
    stragglers: list[StragglerStatus] = Field(default_factory=list)
    data_shares: list[float] | None = Field(
        default=None, description="Work shares of the data-parallel ranks (rebalancing); unset: even."
    )
    straggler_mitigated_step: int | None = Field(
        default=None, description="Step of the last straggler mitigation; the cool-down counts from it."
    )
    avoided_nodes: list[str] = Field(
        default_factory=list,
        description="Kubernetes: nodes where a straggler was replaced; every later generation "
        "keeps off them (required node affinity NotIn on kubernetes.io/hostname) for the rest "
        "of the job, unless spec.readmit takes them back.",
    )
    readmitted: Readmit | None = Field(
        default=None, description="spec.readmit as last applied: the nodes taken out of avoidedNodes then."
    )
