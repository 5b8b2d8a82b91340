"""The ``TrainingJob`` custom resource: spec and status, the single source of its CRD schema.

Field docstrings become the CRD's ``description``s (``kubectl explain tj.spec.data``).
Cross-field rules (min <= max, degrees that divide the world) live in ``validation.py``,
so both ``shardwright validate`` and the admission webhook apply the same checks.
"""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal, Self

from pydantic import AfterValidator, ConfigDict, Field, field_validator, model_validator
from pydantic.alias_generators import to_camel

from .base import ApiModel, ObjectMeta
from .devices import Device, NetworkSpec
from .enums import (
    AttentionKind,
    DataSource,
    FailureAction,
    Runtime,
    SequenceKind,
    StragglerAction,
    SyntheticTask,
)
from .podtemplate import PodTemplate
from .presets import PRESETS, ModelPreset
from .readmit import Readmit
from .resources import ResourcesSpec
from .storagespec import CheckpointSpec, ExportSpec, storage_uri
from .trainingjobstatus import TrainingJobStatus
from . import localpaths, rules
from shardwright.workers.config import LORA_TARGETS, LoraConfig, ModelConfig
from shardwright.workers import storage
from shardwright.workers.hf import config as hf_config

GROUP = "shardwright.io"
VERSION = "v1alpha1"

DnsLabel = Annotated[
    str, Field(min_length=1, max_length=40, pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
]


# ----------------------------------------------------------------------------- spec


class ModelSpec(ApiModel):
    """A decoder-only transformer: a preset, optionally with some dimensions overridden."""

    preset: ModelPreset = Field(default=ModelPreset.TINY, description="Named size to start from.")
    vocab_size: int | None = Field(default=None, ge=2, description="Vocabulary size.")
    dim: int | None = Field(default=None, ge=8, description="Hidden (model) dimension.")
    layers: int | None = Field(default=None, ge=1, le=256, description="Number of blocks.")
    heads: int | None = Field(default=None, ge=1, description="Query heads per layer.")
    kv_heads: int | None = Field(
        default=None, ge=1, description="Key/value heads (GQA); must divide heads."
    )
    ffn_dim: int | None = Field(default=None, ge=8, description="SwiGLU hidden dimension.")
    attention: AttentionKind = Field(
        default=AttentionKind.SOFTMAX, description="Token mixer of every layer."
    )
    layer_pattern: list[AttentionKind] | None = Field(
        default=None,
        min_length=1,
        description="Hybrid models: mixers repeated cyclically over the layers, e.g. "
        "[gated-delta, gated-delta, gated-delta, softmax]. Overrides `attention`.",
    )

    def resolve(self) -> ModelConfig:
        """The preset's dimensions with this spec's overrides, one mixer named per layer."""
        dims = dict(PRESETS[self.preset])
        dims.update({k: v for k in dims if (v := getattr(self, k)) is not None})
        pattern = self.layer_pattern or [self.attention]
        kinds = tuple(str(pattern[i % len(pattern)]) for i in range(dims["layers"]))
        return ModelConfig(**dims, layer_kinds=kinds)


#: What ``from`` decides when it is set.
_SHAPE_FIELDS = frozenset({
    "preset", "vocab_size", "dim", "layers", "heads", "kv_heads", "ffn_dim", "attention", "layer_pattern",
})


class TrainingModelSpec(ModelSpec):
    """A decoder-only transformer: a preset with overrides, or a Hugging Face model (`from`)."""

    from_: str | None = Field(
        default=None,
        alias="from",
        min_length=1,
        description="A Hugging Face model directory (config.json, safetensors, tokenizer files) of "
        "the Llama family (Llama 2/3, Mistral, Qwen2), e.g. a TrainingJob's export: its architecture "
        "and weights start the job, or are served by a pool with its tokenizer.json. A path is read "
        "by every rank or replica, and on one machine also at validation (the operator in a cluster "
        "mounts no rank volume); an s3://bucket/prefix URI is fetched by each when it starts (docs/models.md). Excludes preset, dimensions, "
        "attention and layerPattern.",
    )

    @field_validator("from_")
    @classmethod
    def _readable_llama(cls, path: str | None) -> str | None:
        if path is not None and storage.is_url(path):  # read where it is used: the webhook holds no keys
            return storage_uri(path)
        if path is not None and localpaths.checked_here():
            try:
                hf_config.read_config(path)
            except (OSError, ValueError, TypeError) as e:  # unreadable, not JSON, a wrong type, or a field the model cannot express
                raise ValueError(str(e)) from None
        return path

    @model_validator(mode="after")
    def _from_alone(self) -> Self:
        if self.from_ is not None and (clash := sorted(self.model_fields_set & _SHAPE_FIELDS)):
            raise ValueError(f"from gives the whole architecture; remove {', '.join(map(to_camel, clash))}")
        return self

    def resolve(self) -> ModelConfig:
        """The architecture of ``from`` (its weights' path in ``source``), else the preset's."""
        if self.from_ is not None and (storage.is_url(self.from_) or not localpaths.checked_here()):
            # Each rank reads config.json when it starts (workers/hf/fetch.py); until then the
            # planner and the cross-field checks see the default preset's dimensions.
            return super().resolve().model_copy(update={"source": self.from_})
        if self.from_ is not None:
            return hf_config.read_config(self.from_)
        return super().resolve()


class DataValidationSpec(ApiModel):
    """The held-out split (docs/data.md): its own data, or documents held out of spec.data.path."""

    path: Annotated[str | None, AfterValidator(storage_uri)] = Field(
        default=None, description="Held-out data of the same kind as spec.data.path: a file, a directory or an s3:// URI.")
    fraction: float = Field(
        default=0.0, ge=0, lt=1, description="Share of spec.data.path's documents held out, chosen by a hash of "
        "each document's index (source text or tokens); 0: none.")


class DataSpec(ApiModel):
    """Where samples come from; sample i of the stream is the same at every world size."""

    source: DataSource = Field(
        default=DataSource.SYNTHETIC, description="synthetic, file (one token file, fixed windows), text "
        "(JSONL/Parquet records tokenized with spec.model.from's tokenizer) or tokens (pre-tokenized shards); "
        "text and tokens are packed into samples with document boundaries kept (docs/data.md).")
    task: SyntheticTask = Field(
        default=SyntheticTask.MARKOV_COPY, description="Synthetic task (source: synthetic)."
    )
    path: Annotated[str | None, AfterValidator(storage_uri)] = Field(
        default=None, description="source file: a .npy/.bin token file; text: a .jsonl or .parquet file or a "
        "directory of them; tokens: a .npy/.bin shard or a directory of them. A path or an s3:// URI (text, tokens).")
    field: str = Field(default="text", min_length=1, description="The record field holding the text (source: text).")
    dtype: Literal["uint16", "uint32"] = Field(
        default="uint16", description="Element type of .bin shards (source: tokens); .npy files carry their own.")
    validation: DataValidationSpec | None = Field(default=None, description="The held-out split (docs/data.md).")
    seq_len: int = Field(default=128, ge=4, le=1 << 20, description="Tokens per sample.")
    global_batch: int = Field(default=16, ge=1, description="Samples per optimizer step.")
    micro_batch: int = Field(
        default=8, ge=1, description="Most samples one rank runs per forward pass."
    )
    seed: int = Field(default=0, ge=0, description="Seed of the synthetic stream and of the document order.")


class LoraSpec(ApiModel):
    """Low-rank adapters (docs/finetuning.md): the model's weights frozen, each target W used
    as W + alpha/rank * B A with only A and B trained, as PEFT's LoRA."""

    rank: int = Field(default=8, ge=1, description="Rank r of each adapter (PEFT's r).")
    alpha: float | None = Field(
        default=None, gt=0, description="Scale: the update is alpha/rank * B A (PEFT's lora_alpha). Unset: rank (a scale of 1).")
    dropout: float = Field(default=0.0, ge=0, lt=1, description="Dropout on the adapters' input (PEFT's lora_dropout).")
    targets: list[Literal[LORA_TARGETS]] = Field(
        default_factory=lambda: ["q_proj", "v_proj"], min_length=1,
        description="Projections to adapt, by their Hugging Face module names (PEFT's target_modules); "
        "default q_proj, v_proj as PEFT's for Llama. Linear-attention layers have only gate_proj, up_proj, down_proj.")

    def resolve(self) -> LoraConfig:
        return LoraConfig(rank=self.rank, alpha=self.alpha or self.rank, dropout=self.dropout,
                          targets=tuple(dict.fromkeys(self.targets)))


class TrainingSpec(ApiModel):
    """The optimisation: AdamW with linear warmup and cosine decay."""

    steps: int = Field(ge=1, description="Optimizer steps to train for.")
    lr: float = Field(default=3e-3, gt=0, le=10, description="Peak learning rate.")
    warmup_steps: int = Field(default=10, ge=0, description="Linear warmup steps.")
    weight_decay: float = Field(default=0.0, ge=0, description="AdamW weight decay.")
    grad_clip: float | None = Field(
        default=1.0, gt=0, description="Clip the global gradient norm to this; unset: no clip."
    )
    seed: int = Field(default=0, ge=0, description="Seed of parameter initialisation.")
    lora: LoraSpec | None = Field(default=None, description="Train low-rank adapters only; unset: every weight (full fine-tuning).")
    precision: Literal["fp32", "bf16", "auto"] = Field(
        default="auto", description="fp32; bf16: autocast to bfloat16 (weights, gradients and optimizer state stay "
        "float32), on CPU too; auto: bf16 where the device has it (CUDA with bfloat16), else fp32.")


class EvaluationSpec(ApiModel):
    """Held-out loss and perplexity while training (docs/evaluation.md)."""

    interval_steps: int = Field(ge=1, description="Evaluate every this many steps, and at the last step.")
    samples: int = Field(default=16, ge=1, description="Held-out samples each evaluation reads.")


class SequenceParallelSpec(ApiModel):
    degree: int = Field(default=1, ge=1, description="Ranks that split one sequence.")
    kind: SequenceKind = Field(
        default=SequenceKind.AUTO,
        description="Kernel for softmax layers; linear-attention layers use LASP-2. "
        "auto: zigzag ring for causal softmax.",
    )


class ParallelismSpec(ApiModel):
    """Parallel degrees. Their product is the world size; unset data is derived from it."""

    auto: bool = Field(default=False, description="Let the planner choose every degree.")
    data: int | None = Field(default=None, ge=1, description="Data-parallel degree.")
    tensor: int = Field(default=1, ge=1, description="Tensor-parallel degree.")
    pipeline: int = Field(default=1, ge=1, description="Pipeline-parallel degree.")
    sequence: SequenceParallelSpec = Field(default_factory=SequenceParallelSpec)


class WorkerGroupSpec(ApiModel):
    """Identical replicas (pods), each running ``ranksPerReplica`` rank processes."""

    name: DnsLabel = Field(default="worker", description="Group name, unique in the job.")
    replicas: int = Field(ge=1, description="Pods in this group.")
    ranks_per_replica: int = Field(default=1, ge=1, le=64, description="Ranks (GPUs) per pod.")
    device: Device = Field(
        default=Device.GPU,
        description="gpu: one GPU per rank, the pod's nvidia.com/gpu request and limit are ranksPerReplica. "
        "cpu: the ranks run on CPU (gloo) and ask for no GPU.",
    )
    gpu_type: str | None = Field(
        default=None,
        description="GPU product, e.g. NVIDIA-H100-80GB-HBM3: the planner places on it and the pods select "
        "nodes by the label nvidia.com/gpu.product with this value.",
    )
    image: str | None = Field(default=None, description="Worker image; the chart's by default.")
    node_selector: dict[str, str] = Field(default_factory=dict)
    resources: ResourcesSpec = Field(default_factory=ResourcesSpec)
    network: NetworkSpec = Field(
        default_factory=NetworkSpec,
        description="RDMA devices, Multus networks and IPC_LOCK for the group's pods (docs/jobs-on-kubernetes.md).",
    )
    template: PodTemplate = Field(
        default_factory=PodTemplate,
        description="A PodTemplateSpec overlaid on the group's pods: labels, annotations, tolerations, "
        "volumes, sidecars, securityContext and the rest, except the fields the operator owns "
        "(docs/jobs-on-kubernetes.md).",
    )
    command: list[Annotated[str, Field(min_length=1)]] | None = Field(
        default=None,
        min_length=1,
        description="Your own training program instead of the built-in trainer, e.g. "
        "[python, train.py]: every rank runs it with the job's environment and reports through "
        "shardwright.sdk (docs/sdk.md). Every group names the same command. Unset: the trainer.",
    )

    @property
    def ranks(self) -> int:
        return self.replicas * self.ranks_per_replica


class ElasticSpec(ApiModel):
    """Bounds on total replicas when capacity changes; the global batch never changes."""

    model_config = ConfigDict(json_schema_extra=rules.extra(rules.ELASTIC_REPLICAS))

    min_replicas: int = Field(ge=1, description="Fewest replicas the job continues with.")
    max_replicas: int = Field(ge=1, description="Most replicas the job grows back to.")
    replicas: int | None = Field(
        default=None, ge=1,
        description="Total replicas the job wants, within [minReplicas, maxReplicas]: what "
        "`kubectl scale tj/NAME --replicas=N` and an HPA set (the /scale subresource). The last "
        "worker group grows or shrinks by the difference from workers[].replicas; capacity may "
        "still hold the job below it. Unset: the sum of workers[].replicas.",
    )


#: An S3 bucket name (AWS's rules; dots, no two in a row, and the not-an-IP rule checked apart).
class BackoffSpec(ApiModel):
    initial_seconds: float = Field(default=1.0, ge=0, description="Delay before restart 1.")
    max_seconds: float = Field(default=60.0, ge=0, description="Longest delay.")
    factor: float = Field(default=2.0, ge=1, description="Growth per restart.")

    def delay(self, restarts: int) -> float:
        """Seconds to wait before restart number ``restarts`` (1-based)."""
        return min(self.max_seconds, self.initial_seconds * self.factor ** max(restarts - 1, 0))


class FailureRule(ApiModel):
    """Matches a rank failure by exit code and/or message; the first match decides."""

    action: FailureAction = Field(description="Retry (counts a restart) or Fail at once.")
    exit_codes: list[int] = Field(default_factory=list, description="Any of these codes.")
    message: str | None = Field(default=None, description="Regex searched in the error text.")


class FailurePolicySpec(ApiModel):
    max_restarts: int = Field(default=3, ge=0, description="Restarts before the job fails.")
    progress_deadline_seconds: int = Field(
        default=600, ge=1,
        description="A generation that completes no step for this long is hung: it is ended "
        "and restarted (far below the 30-minute collective timeout). Counts from the moment "
        "its ranks first report, so start-up time is not included.",
    )
    backoff: BackoffSpec = Field(default_factory=BackoffSpec)
    rules: list[FailureRule] = Field(default_factory=list)


class StragglerPolicySpec(ApiModel):
    """How a rank whose own compute is slow is found and handled (docs/stragglers.md)."""

    threshold: float = Field(
        default=0.75, gt=0, le=1,
        description="Flag a rank whose relative score (the fastest rank's usual per-sample "
        "compute at the host's current speed / this rank's) falls below this.",
    )
    window: int = Field(
        default=20, ge=3,
        description="Steps the fastest rank's usual lag (its time over each step's "
        "fastest) is a median over; also the cool-down, in steps, between two mitigations.",
    )
    min_steps: int = Field(
        default=5, ge=1,
        description="Consecutive steps below the threshold before a flag (and above the "
        "clearing level before it is lifted).",
    )
    min_seconds: float = Field(
        default=1.0, ge=0,
        description="Seconds the minSteps steps must span at least: a busy host slows one "
        "process for bursts shorter than this, a straggler stays slow.",
    )
    action: StragglerAction = Field(
        default=StragglerAction.REPORT,
        description="report: condition, event, metric. rebalance: also move samples away "
        "from the slow rank. replace: rebalance first; if the rank is still slow after the "
        "cool-down, end the generation and continue without it.",
    )
    cordon: bool = Field(
        default=False,
        description="With action replace, on Kubernetes: also cordon the replaced rank's node "
        "(spec.unschedulable), so no other workload lands there either. The job avoids the "
        "node whether or not it is cordoned (status.avoidedNodes). Needs an operator allowed "
        "to cordon (chart value cordonNodes: true).",
    )


#: What a running generation was started with: these change only while the job is
#: suspended (the CRD's transition rules). Live: workers' replicas and the elastic bounds
#: (a resize), parallelism.data (it follows the replicas), the failure and straggler
#: policies, suspend, the deadlines.
FROZEN = ("model", "data", "training", "parallelism.auto", "parallelism.tensor", "parallelism.pipeline",
          "parallelism.sequence", "checkpoint", "runtime")
#: A worker group's fields that are frozen like :data:`FROZEN` (all but replicas).
FROZEN_GROUP = ("ranksPerReplica", "device", "gpuType", "image", "nodeSelector", "resources", "network", "template", "command")
#: The most worker groups a job has (bounds the cost of the CRD's rule on them).
MAX_GROUPS = 16


class TrainingJobSpec(ApiModel):
    model_config = ConfigDict(json_schema_extra=rules.extra(
        *rules.frozen(FROZEN), *rules.frozen_items("workers", "name", FROZEN_GROUP)))

    model: TrainingModelSpec
    data: DataSpec = Field(default_factory=DataSpec)
    training: TrainingSpec
    evaluation: EvaluationSpec | None = Field(
        default=None, description="Held-out loss and perplexity every intervalSteps; unset: none.")
    parallelism: ParallelismSpec = Field(default_factory=ParallelismSpec)
    workers: list[WorkerGroupSpec] = Field(min_length=1, max_length=MAX_GROUPS, description="Rank groups.")
    elastic: ElasticSpec | None = None
    checkpoint: CheckpointSpec = Field(default_factory=CheckpointSpec)
    export: ExportSpec | None = Field(default=None, description="Export the model when the job completes; unset: no export.")
    failure_policy: FailurePolicySpec = Field(default_factory=FailurePolicySpec)
    straggler_policy: StragglerPolicySpec = Field(default_factory=StragglerPolicySpec)
    readmit: Readmit | None = Field(default=None, description="Take avoided nodes back (stragglers replaced there).")
    runtime: Runtime = Field(default=Runtime.TORCH, description="Launch on Kubernetes.")
    suspend: bool = Field(default=False, description="Stop the ranks, keep the checkpoints.")
    ttl_seconds_after_finished: int | None = Field(
        default=None, ge=0, description="Delete the job this long after it finished."
    )
    active_deadline_seconds: int | None = Field(
        default=None, ge=1, description="Fail the job when it has run this long."
    )

    @property
    def world_size(self) -> int:
        """Ranks the spec asks for: the sum over worker groups."""
        return sum(group.ranks for group in self.workers)

    def replicas_wanted(self) -> dict[str, int]:
        """Pods per worker group the job asks for: ``workers[].replicas``, or with
        ``elastic.replicas`` (``kubectl scale``) that total: the last group takes the
        difference, shrinking groups from the last one first (as capacity shrinks a job)."""
        wanted = {g.name: g.replicas for g in self.workers}
        target = self.elastic.replicas if self.elastic else None
        if target is None:
            return wanted
        names = list(wanted)
        wanted[names[-1]] += max(target - sum(wanted.values()), 0)
        for name in reversed(names):
            wanted[name] -= min(wanted[name], max(sum(wanted.values()) - target, 0))
        return wanted


class TrainingJob(ApiModel):
    """A distributed training run. ``kubectl apply`` it, or ``shardwright run`` it locally."""

    KIND: ClassVar[str] = "TrainingJob"
    PLURAL: ClassVar[str] = "trainingjobs"
    SHORT_NAMES: ClassVar[tuple[str, ...]] = ("tj",)
    PRINTER_COLUMNS: ClassVar[tuple[dict, ...]] = (
        {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
        {"name": "Ready", "type": "integer", "jsonPath": ".status.readyRanks"},
        {"name": "World", "type": "integer", "jsonPath": ".status.worldSize"},
        {"name": "Step", "type": "integer", "jsonPath": ".status.step"},
        {"name": "Restarts", "type": "integer", "jsonPath": ".status.restarts"},
        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
        {"name": "Generation", "type": "integer", "jsonPath": ".status.generation", "priority": 1},
        {"name": "Loss", "type": "number", "jsonPath": ".status.loss", "priority": 1},
        {"name": "Tokens/s", "type": "number", "jsonPath": ".status.tokensPerSecond", "priority": 1},
        {"name": "Checkpoint", "type": "integer", "jsonPath": ".status.lastCheckpoint.step", "priority": 1},
    )

    #: ``kubectl scale tj/NAME --replicas=N`` and an HPA set ``spec.elastic.replicas`` (a job
    #: without ``elastic`` is refused: minReplicas and maxReplicas are required there).
    SCALE: ClassVar[dict[str, str]] = {
        "specReplicasPath": ".spec.elastic.replicas", "statusReplicasPath": ".status.replicas", "labelSelectorPath": ".status.selector",
    }

    api_version: Literal["shardwright.io/v1alpha1"] = Field(alias="apiVersion")
    kind: Literal["TrainingJob"]
    metadata: ObjectMeta
    spec: TrainingJobSpec
    status: TrainingJobStatus | None = None
