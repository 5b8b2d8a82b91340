"""The ``ServingPool`` custom resource: spec, status and cross-field rules.

A pool serves one model from replicas of an engine behind one router. A ``unified`` pool's
size is ``spec.replicas`` (what the ``/scale`` subresource names, so an HPA or KEDA object
can drive it); disaggregated ``prefill`` + ``decode`` roles size themselves. Field
docstrings become the CRD's descriptions (``kubectl explain sp.spec.router``).
``validation.validate`` applies the schema and then ``check_pool_spec``, the rules that
involve several fields, each problem naming the field and the fix (``validate_pool`` is it
for a document that must be a pool).
"""

from __future__ import annotations

from collections.abc import Iterable
from enum import StrEnum
from typing import Any, ClassVar, Literal

from pydantic import Field

from .base import ApiModel, Condition, ObjectMeta
from .enums import AttentionKind
from .resources import ResourcesSpec
from .trainingjob import TrainingModelSpec
from . import validation
from .validation import Problem
from shardwright.workers.serve.config import EngineConfig

#: Label every replica process and pod of a pool carries (the status selector names it).
POOL_LABEL = "shardwright.io/pool"


class EngineKind(StrEnum):
    """Who runs the model in a replica."""

    BUILTIN = "builtin"
    VLLM = "vllm"
    SGLANG = "sglang"


class RoleName(StrEnum):
    UNIFIED = "unified"
    PREFILL = "prefill"
    DECODE = "decode"


class RoutingPolicy(StrEnum):
    PREFIX_AWARE = "prefix-aware"
    LEAST_LOAD = "least-load"
    ROUND_ROBIN = "round-robin"


class ScalingSignal(StrEnum):
    QUEUE_DEPTH = "queue-depth"
    TTFT = "ttft"
    TOKENS_PER_SECOND = "tokens-per-second"


class PoolPhase(StrEnum):
    PENDING = "Pending"
    RUNNING = "Running"
    UPDATING = "Updating"
    SCALED_TO_ZERO = "ScaledToZero"
    FAILED = "Failed"


class ReplicaState(StrEnum):
    """One replica's life as the pool core sees it."""

    #: Process started, not answering yet (loading weights, warming up).
    STARTING = "Starting"
    #: Answers /health: warmed up and serving (routable once the router's probe agrees).
    READY = "Ready"
    #: Finishing its running requests, taking no new ones.
    DRAINING = "Draining"
    #: The process has ended.
    EXITED = "Exited"


class PoolConditionType(StrEnum):
    #: At least desired - maxUnavailable replicas are routable.
    AVAILABLE = "Available"
    #: Replicas are being started, replaced or removed.
    PROGRESSING = "Progressing"


class PoolReason(StrEnum):
    """Event and condition reasons of a ServingPool."""

    REPLICA_STARTED = "ReplicaStarted"
    REPLICA_READY = "ReplicaReady"
    REPLICA_FAILED = "ReplicaFailed"
    REPLICA_DRAINING = "ReplicaDraining"
    REPLICA_STOPPED = "ReplicaStopped"
    DRAIN_TIMEOUT = "DrainTimeout"
    SCALED_UP = "ScaledUp"
    SCALED_DOWN = "ScaledDown"
    ROLLOUT_STARTED = "RolloutStarted"
    ROLLOUT_COMPLETE = "RolloutComplete"
    MINIMUM_ROUTABLE = "MinimumReplicasRoutable"
    TOO_FEW_ROUTABLE = "TooFewReplicasRoutable"
    STABLE = "Stable"
    POOL_STOPPED = "PoolStopped"


# ----------------------------------------------------------------------------- spec


class ServedModelSpec(TrainingModelSpec):
    """The transformer to serve: a preset with overrides and where its weights come from, or a
    Hugging Face directory (`from`, e.g. a TrainingJob's export; excludes checkpoint and seed)."""

    served_name: str | None = Field(default=None, min_length=1, description="Name clients send as `model`; the pool's name when unset.")
    checkpoint: str | None = Field(default=None, description="Checkpoint (path or URI, e.g. a TrainingJob's lastCheckpoint.uri) to load; unset: weights drawn from seed.")
    seed: int = Field(default=0, ge=0, description="Seed of the weights when no checkpoint is given.")


class EngineSpec(ApiModel):
    """The engine of every replica and its limits (the built-in engine: docs/serving.md)."""

    kind: EngineKind = Field(default=EngineKind.BUILTIN, description="builtin (this issue); vllm and sglang are rendered by a later release.")
    max_batch_tokens: int = Field(default=256, ge=1, description="Token budget of one iteration: running decodes plus prefill chunks (SARATHI's chunk size).")
    max_running_requests: int = Field(default=64, ge=1, description="Requests decoded together; more wait in the queue.")
    max_model_len: int = Field(default=512, ge=2, description="Longest prompt plus output, in tokens.")
    block_size: int = Field(default=16, ge=1, le=1024, description="Tokens per KV-cache block: the unit of allocation and of prefix caching.")
    kv_blocks: int = Field(default=256, ge=1, description="KV-cache blocks per replica.")
    chunked_prefill: bool = Field(default=True, description="Cut long prompts into chunks under the budget so decodes never stall behind them.")
    prefix_caching: bool = Field(default=True, description="Reuse the KV of full blocks already computed for the same prefix.")
    dtype: Literal["float32", "bfloat16"] = Field(default="float32", description="Weights and KV-cache type.")

    def resolve(self) -> EngineConfig:
        return EngineConfig(
            block_size=self.block_size, num_blocks=self.kv_blocks, max_num_batched_tokens=self.max_batch_tokens,
            max_num_seqs=self.max_running_requests, max_model_len=self.max_model_len,
            enable_chunked_prefill=self.chunked_prefill, enable_prefix_caching=self.prefix_caching,
        )


class ServingParallelismSpec(ApiModel):
    tensor: int = Field(default=1, ge=1, description="Tensor-parallel degree inside one replica.")


class RoleSpec(ApiModel):
    """One kind of replica: unified (prefill and decode together) or one side of a split."""

    name: RoleName = Field(default=RoleName.UNIFIED, description="unified, or prefill / decode for a disaggregated pool.")
    replicas: int | None = Field(default=None, ge=0, description="Replicas of a prefill or decode role; a unified pool uses spec.replicas.")
    min_replicas: int = Field(default=1, ge=0, description="Fewest replicas autoscaling goes down to (0 with autoscaling.idleToZero).")
    max_replicas: int = Field(default=4, ge=1, description="Most replicas autoscaling goes up to.")
    parallelism: ServingParallelismSpec = Field(default_factory=ServingParallelismSpec)
    gpu_type: str | None = Field(default=None, description="GPU product for placement, e.g. NVIDIA-H100-80GB-HBM3.")
    gpu_cost: float | None = Field(default=None, ge=0, description="Cost per GPU-hour of gpuType, for cost-aware scaling.")
    image: str | None = Field(default=None, description="Replica image; the chart's by default.")
    node_selector: dict[str, str] = Field(default_factory=dict)
    resources: ResourcesSpec = Field(default_factory=ResourcesSpec)


class RouterSpec(ApiModel):
    """The pool's one front door."""

    policy: RoutingPolicy = Field(default=RoutingPolicy.PREFIX_AWARE, description="prefix-aware (cached-prefix overlap and load), least-load or round-robin.")
    retries: int = Field(default=2, ge=0, le=10, description="Other replicas a request is tried on before it fails (before its first token).")
    migrate_on_failure: bool = Field(default=True, description="A stream whose replica dies continues on another from its prompt plus the tokens already sent.")
    request_timeout_seconds: float = Field(default=60.0, gt=0, description="A replica that sends nothing for this long is given up on.")


class AutoscalingSpec(ApiModel):
    """Replica count from a load signal, between each role's minReplicas and maxReplicas."""

    signal: ScalingSignal = Field(default=ScalingSignal.QUEUE_DEPTH, description="queue-depth (waiting requests per replica), ttft (p99 seconds) or tokens-per-second per replica.")
    target: float = Field(gt=0, description="Value of the signal per replica the scaler aims at.")
    scale_down_stabilization_seconds: int = Field(default=300, ge=0, description="The signal must allow fewer replicas for this long before a scale-down.")
    idle_to_zero: bool = Field(default=False, description="Scale to zero replicas after idleSeconds without requests; requests that arrive then are held while a replica starts.")
    idle_seconds: int = Field(default=600, ge=1, description="Seconds without a request before scaling to zero.")
    hold_seconds: float = Field(default=120.0, gt=0, description="Longest a request is held while the pool scales up from zero.")


class SLOSpec(ApiModel):
    """Latency targets; goodput counts requests that meet both."""

    ttft_p99_seconds: float | None = Field(default=None, gt=0, description="Time to first token, 99th percentile.")
    tpot_p99_seconds: float | None = Field(default=None, gt=0, description="Time per output token after the first, 99th percentile.")


class LengthBucket(ApiModel):
    """Requests of one size: prompt and output tokens, and their share of the traffic."""

    input_tokens: int = Field(ge=1, description="Prompt tokens.")
    output_tokens: int = Field(ge=1, description="Generated tokens.")
    share: float = Field(gt=0, description="Share of the requests (the shares are normalised to sum to 1).")


class TrafficSpec(ApiModel):
    """The traffic the pool is expected to serve: what `shardwright plan` sizes its GPU mix for."""

    requests_per_second: float = Field(gt=0, description="Requests arriving per second, all sizes together.")
    lengths: list[LengthBucket] = Field(min_length=1, max_length=32, description="The request sizes and their shares.")


class RolloutSpec(ApiModel):
    """How replicas are replaced when the spec changes: surge, route away, drain, replace."""

    max_surge: int = Field(default=1, ge=0, description="Replicas started above the desired count during a rollout.")
    max_unavailable: int = Field(default=0, ge=0, description="Routable replicas the rollout may take below the desired count.")
    drain_timeout_seconds: float = Field(default=30.0, ge=0, description="An old replica gets this long to finish its requests after the router stops sending it new ones.")


class ServingPoolSpec(ApiModel):
    model: ServedModelSpec = Field(default_factory=ServedModelSpec)
    engine: EngineSpec = Field(default_factory=EngineSpec)
    replicas: int = Field(default=1, ge=0, description="Replicas of a unified pool (the /scale subresource's spec path).")
    roles: list[RoleSpec] = Field(default_factory=lambda: [RoleSpec()], min_length=1, max_length=len(RoleName), description="unified, or prefill and decode.")
    router: RouterSpec = Field(default_factory=RouterSpec)
    autoscaling: AutoscalingSpec | None = Field(default=None, description="Unset: the replica counts stay as written.")
    slo: SLOSpec = Field(default_factory=SLOSpec)
    traffic: TrafficSpec | None = Field(default=None, description="Expected traffic, for planning the GPU mix (`shardwright plan`).")
    rollout: RolloutSpec = Field(default_factory=RolloutSpec)


# ----------------------------------------------------------------------------- status


class LatencyStatus(ApiModel):
    p50: float | None = Field(default=None, description="Median, seconds.")
    p99: float | None = Field(default=None, description="99th percentile, seconds.")


class RoleStatus(ApiModel):
    name: RoleName
    replicas: int = 0
    ready_replicas: int = 0
    routable_replicas: int = 0
    updated_replicas: int = 0


class ServingPoolStatus(ApiModel):
    phase: PoolPhase = PoolPhase.PENDING
    conditions: list[Condition] = Field(default_factory=list)
    observed_generation: int | None = None
    replicas: int = Field(default=0, description="Replicas that exist (the /scale subresource's status path).")
    ready_replicas: int = Field(default=0, description="Replicas whose process is up and warmed.")
    routable_replicas: int = Field(default=0, description="Ready replicas the router sends requests to (registered, not draining).")
    updated_replicas: int = Field(default=0, description="Replicas running the current spec.")
    roles: list[RoleStatus] = Field(default_factory=list)
    queue_depth: int = Field(default=0, description="Requests waiting, over all replicas.")
    ttft_seconds: LatencyStatus = Field(default_factory=LatencyStatus)
    tpot_seconds: LatencyStatus = Field(default_factory=LatencyStatus)
    tokens_per_second: float | None = None
    endpoint: str | None = Field(default=None, description="The router's URL.")
    selector: str | None = Field(default=None, description=f"Label selector of the pool's replicas ({POOL_LABEL}=<name>).")


class ServingPool(ApiModel):
    """A pool of model replicas behind one OpenAI-compatible router."""

    KIND: ClassVar[str] = "ServingPool"
    PLURAL: ClassVar[str] = "servingpools"
    SHORT_NAMES: ClassVar[tuple[str, ...]] = ("sp",)
    #: The /scale subresource: HPA, KEDA and `kubectl scale` set spec.replicas.
    SCALE: ClassVar[dict[str, str]] = {
        "specReplicasPath": ".spec.replicas", "statusReplicasPath": ".status.replicas", "labelSelectorPath": ".status.selector",
    }
    PRINTER_COLUMNS: ClassVar[tuple[dict, ...]] = (
        {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
        {"name": "Replicas", "type": "integer", "jsonPath": ".spec.replicas"},
        {"name": "Ready", "type": "integer", "jsonPath": ".status.readyReplicas"},
        {"name": "Routable", "type": "integer", "jsonPath": ".status.routableReplicas"},
        {"name": "Endpoint", "type": "string", "jsonPath": ".status.endpoint"},
        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
        {"name": "Queue", "type": "integer", "jsonPath": ".status.queueDepth", "priority": 1},
        {"name": "TTFT-p99", "type": "number", "jsonPath": ".status.ttftSeconds.p99", "priority": 1},
        {"name": "TPOT-p99", "type": "number", "jsonPath": ".status.tpotSeconds.p99", "priority": 1},
        {"name": "Tokens/s", "type": "number", "jsonPath": ".status.tokensPerSecond", "priority": 1},
    )

    api_version: Literal["shardwright.io/v1alpha1"] = Field(alias="apiVersion")
    kind: Literal["ServingPool"]
    metadata: ObjectMeta
    spec: ServingPoolSpec
    status: ServingPoolStatus | None = None


# ----------------------------------------------------------------------------- validation


def validate_pool(doc: Any) -> tuple[ServingPool | None, list[Problem]]:
    """``validation.validate`` for a document that must be a ServingPool."""
    if isinstance(doc, dict) and doc.get("kind") != "ServingPool":
        return None, [Problem("kind", f"must be ServingPool (got {doc.get('kind')})")]
    return validation.validate(doc)  # type: ignore[return-value]


def check_pool_spec(spec: ServingPoolSpec) -> Iterable[Problem]:
    """Rules that involve more than one field; each names the field to change."""
    m = spec.model.resolve()
    if m.dim % m.heads:
        yield Problem("spec.model.heads", f"must divide dim ({m.dim}); got {m.heads}")
    elif (m.dim // m.heads) % 2:
        yield Problem("spec.model.heads", f"dim/heads must be even for rotary positions; got {m.dim}/{m.heads}")
    if m.heads % m.kv_heads:
        yield Problem("spec.model.kvHeads", f"must divide heads ({m.heads}); got {m.kv_heads}")
    if spec.model.from_ is not None:  # the directory gives the weights too
        for clash in sorted({"checkpoint", "seed"} & spec.model.model_fields_set):
            yield Problem(f"spec.model.{clash}", f"from gives the weights; remove {clash} (or from)")
    if spec.engine.kind is not EngineKind.BUILTIN:
        yield Problem("spec.engine.kind", f"{spec.engine.kind} is not supported yet; allowed: builtin")
    elif any(k != AttentionKind.SOFTMAX for k in m.layer_kinds):
        yield Problem("spec.model.attention", "the builtin engine serves softmax attention only; allowed: softmax (no layerPattern with linear mixers)")
    e = spec.engine
    if e.kv_blocks * e.block_size < e.max_model_len:
        yield Problem("spec.engine.kvBlocks", f"kvBlocks x blockSize ({e.kv_blocks} x {e.block_size}) must hold maxModelLen ({e.max_model_len}) tokens; raise kvBlocks to at least {-(-e.max_model_len // e.block_size)}")
    if not e.chunked_prefill and e.max_batch_tokens < e.max_model_len:
        yield Problem("spec.engine.maxBatchTokens", f"without chunkedPrefill a whole prompt is prefilled in one iteration: must be >= maxModelLen ({e.max_model_len}); got {e.max_batch_tokens}")

    names = [r.name for r in spec.roles]
    for i, role in enumerate(spec.roles):
        path = f"spec.roles[{i}]"
        if role.name in names[:i]:
            yield Problem(f"{path}.name", f"duplicate role {role.name}")
        if role.name is not RoleName.UNIFIED:
            yield Problem(f"{path}.name", f"{role.name} roles (disaggregated prefill/decode) are not supported yet; allowed: unified")
        elif role.replicas is not None:
            yield Problem(f"{path}.replicas", "a unified pool's size is spec.replicas (the /scale path); remove roles[].replicas")
        yield from validation.check_resources(f"{path}.resources", role.resources)
        if role.parallelism.tensor != 1:
            yield Problem(f"{path}.parallelism.tensor", "tensor parallelism is not supported by the builtin engine yet; allowed: 1")
        if role.min_replicas > role.max_replicas:
            yield Problem(f"{path}.minReplicas", f"must be <= maxReplicas ({role.max_replicas}); got {role.min_replicas}")
        elif role.name is RoleName.UNIFIED and spec.autoscaling is not None and not role.min_replicas <= spec.replicas <= role.max_replicas:
            yield Problem("spec.replicas", f"must be within roles[{i}] minReplicas..maxReplicas ({role.min_replicas}..{role.max_replicas}) when autoscaling; got {spec.replicas}")
        if role.min_replicas == 0 and not (spec.autoscaling and spec.autoscaling.idle_to_zero):
            yield Problem(f"{path}.minReplicas", "0 needs autoscaling.idleToZero: true (someone must start a replica when a request comes)")
    if spec.replicas == 0 and not (spec.autoscaling and spec.autoscaling.idle_to_zero):
        yield Problem("spec.replicas", "0 serves nothing; use 1 or more, or autoscaling.idleToZero: true")
    if spec.traffic is not None:
        for i, bucket in enumerate(spec.traffic.lengths):
            if bucket.input_tokens + bucket.output_tokens > e.max_model_len:
                yield Problem(f"spec.traffic.lengths[{i}]", f"inputTokens + outputTokens ({bucket.input_tokens + bucket.output_tokens}) must be <= engine.maxModelLen ({e.max_model_len})")
    r = spec.rollout
    if r.max_surge == 0 and r.max_unavailable == 0:
        yield Problem("spec.rollout.maxSurge", "maxSurge and maxUnavailable cannot both be 0 (a rollout could never replace a replica); set maxSurge: 1")


__all__ = [
    "POOL_LABEL", "ReplicaState", "PoolConditionType", "PoolReason", "EngineKind", "RoleName", "RoutingPolicy", "ScalingSignal", "PoolPhase",
    "ServedModelSpec", "EngineSpec", "RoleSpec", "RouterSpec", "AutoscalingSpec", "SLOSpec", "LengthBucket", "TrafficSpec", "RolloutSpec",
    "ServingPoolSpec", "ServingPoolStatus", "RoleStatus", "LatencyStatus", "ServingPool", "validate_pool", "check_pool_spec",
]
