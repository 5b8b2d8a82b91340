"""Everything a rank needs to run, rendered by the controller. pydantic only: no torch here.

The operator imports this module to render configs; the rank process reads one back
(``WorkerConfig.model_validate_json``). Per-rank facts (rank, world size, rendezvous)
come from the torch environment contract instead: ``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT`` (see ``RankEnv``).
"""

from __future__ import annotations

import os
from typing import Literal, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

from .faults import Fault

#: Environment variable that carries the JSON ``WorkerConfig`` into a rank process.
CONFIG_ENV = "SHARDWRIGHT_WORKER_CONFIG"
#: Optional per-rank telemetry port, for ranks that share one host (the local runner).
TELEMETRY_PORT_ENV = "SHARDWRIGHT_TELEMETRY_PORT"
#: Optional file where a pod's first rank leaves its final report when it exits (on
#: Kubernetes the container's terminationMessagePath), read back from the pod's status.
TERMINATION_MESSAGE_ENV = "SHARDWRIGHT_TERMINATION_MESSAGE"
#: The job's telemetry token: ``/status`` and ``POST /control`` answer only requests that
#: carry it (``Authorization: Bearer <token>``). On Kubernetes from the job's Secret.
TOKEN_ENV = "SHARDWRIGHT_TELEMETRY_TOKEN"


#: Token mixers that are linear-attention recurrences (everything but ``softmax``).
LINEAR_KINDS = ("gated-delta", "kda", "kla", "gdn2")


def softmax_kernel(requested: str, layer_kinds: tuple[str, ...]) -> str:
    """The sequence-parallel kernel softmax layers use: ring, zigzag, ulysses or tokenring.

    ``auto`` (and ``lasp2``, which names the linear layers' scheme) picks the zigzag ring,
    balanced for causal attention, unless the model has linear-attention layers: LASP-2
    scans contiguous shards in rank order, so every layer must see the contiguous layout.
    """
    if requested not in ("auto", "lasp2"):
        return requested
    return "ring" if any(k in LINEAR_KINDS for k in layer_kinds) else "zigzag"


def sequence_layout(kernel: str) -> str:
    """How a sequence is dealt to ranks: the zigzag ring wants chunks r and 2P-1-r."""
    return "zigzag" if kernel == "zigzag" else "contiguous"


class _Config(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class RopeScaling(_Config):
    """Rotary frequencies stretched for long context, as Hugging Face's ``rope_scaling``.

    ``linear`` divides every frequency by ``factor``; ``llama3`` divides only the low ones
    (wavelengths beyond ``original_max_positions / low_freq_factor``) and blends between.
    """

    type: Literal["linear", "llama3"]
    factor: float = Field(gt=0)
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_positions: int = 8192


class ModelConfig(_Config):
    """Resolved transformer dimensions; ``layer_kinds[i]`` is layer i's token mixer."""

    vocab_size: int
    dim: int
    layers: int
    heads: int
    kv_heads: int
    ffn_dim: int
    layer_kinds: tuple[str, ...]
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5
    rope_scaling: RopeScaling | None = None
    #: The output head shares the embedding matrix (Llama 3.2 1B, small Qwen2 models).
    tie_embeddings: bool = False
    #: Biases on the query/key/value projections (Qwen2) and on the output projection.
    qkv_bias: bool = False
    out_bias: bool = False
    #: Hugging Face directory (``spec.model.from``) whose weights the model starts from.
    source: str | None = None

    @property
    def head_dim(self) -> int:
        return self.dim // self.heads

    @model_validator(mode="after")
    def _check(self) -> Self:
        if len(self.layer_kinds) != self.layers:
            raise ValueError("layer_kinds must name one mixer per layer")
        return self


class DataConfig(_Config):
    source: str = "synthetic"
    task: str = "markov-copy"
    path: str | None = None
    seq_len: int
    global_batch: int
    micro_batch: int
    seed: int = 0
    #: source text: the record field holding the text.
    field: str = "text"
    #: source tokens: the element type of .bin shards.
    dtype: Literal["uint16", "uint32"] = "uint16"
    #: The spec.model.from directory: its tokenizer.json (text) and EOS (text, tokens).
    tokenizer: str | None = None
    #: The held-out split: its own path, or the fraction of documents held out by index hash.
    validation_path: str | None = None
    validation_fraction: float = 0.0


class OptimConfig(_Config):
    steps: int
    lr: float
    warmup_steps: int = 0
    weight_decay: float = 0.0
    grad_clip: float | None = 1.0
    seed: int = 0
    #: fp32, bf16 (autocast; on CPU too) or auto (bf16 where the device has it: CUDA with bf16).
    precision: Literal["fp32", "bf16", "auto"] = "fp32"


#: Projections LoRA can adapt, by their Hugging Face module names (PEFT's ``target_modules``).
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
#: Those of the attention layer: linear-attention mixers have none of them.
LORA_ATTENTION_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj")


class LoraConfig(_Config):
    """Low-rank adapters (``spec.training.lora``): the base weights frozen, each target ``W``
    used as ``W + alpha/rank * B A``, with A ``[rank, in]`` and B ``[out, rank]`` trained."""

    rank: int = Field(ge=1)
    alpha: float = Field(gt=0)
    dropout: float = Field(default=0.0, ge=0, lt=1)
    targets: tuple[Literal[LORA_TARGETS], ...] = ("q_proj", "v_proj")

    @property
    def scaling(self) -> float:
        return self.alpha / self.rank


class EvalConfig(_Config):
    """Held-out evaluation (``spec.evaluation``): every ``interval_steps`` and at the last step."""

    interval_steps: int = Field(ge=1)
    #: Held-out samples per evaluation, shared out over the data-parallel ranks.
    samples: int = Field(ge=1)


class ParallelConfig(_Config):
    """Degrees of this generation; ranks are laid out sequence-fastest: rank = d * sp + s."""

    data: int
    sequence: int = 1
    sequence_kind: str = "auto"
    #: Relative work share of each data-parallel rank (sums need not be 1); None: even.
    data_shares: tuple[float, ...] | None = None

    @property
    def world_size(self) -> int:
        return self.data * self.sequence

    @property
    def layout(self) -> str:
        return f"dp={self.data},sp={self.sequence}"


class CheckpointConfig(_Config):
    dir: str = Field(description="Directory (or s3://bucket/prefix) holding step-NNNNNNNN checkpoint folders.")
    interval_steps: int = 50
    keep: int = 3
    async_save: bool = False
    resume_from: str | None = Field(default=None, description="Committed checkpoint to load.")
    owner: str | None = Field(
        default=None, description="uid of the job writing here (recorded in each manifest; resume_newest loads only its own).")
    resume_newest: bool = Field(
        default=False,
        description="Load the newest committed checkpoint in dir when it is newer than resume_from: a restart "
                    "whose controller may not have seen the last commit (rank 0 killed, its probes blocked).",
    )
    # Where the pods that run the ranks get their storage (the operator renders these; the
    # ranks reach an object store through the environment they make, never read them).
    endpoint: str | None = Field(default=None, description="S3-compatible server of an s3:// dir: AWS_ENDPOINT_URL in every rank pod.")
    credentials_secret: str | None = Field(
        default=None, description="Secret whose keys become the environment of every rank pod (envFrom): the store's keys.")
    volume_claim: str | None = Field(
        default=None, description="PersistentVolumeClaim mounted at the checkpoint mount of every rank pod instead of the operator's.")


class ExportConfig(_Config):
    """The Hugging Face directory rank 0 writes when the job completes (``spec.export``)."""

    dir: str = Field(description="Path or s3://bucket/prefix, replaced if it exists.")
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"


class WorkerConfig(_Config):
    """One generation's configuration, identical on every rank."""

    job: str
    namespace: str = "default"
    generation: int = 1
    model: ModelConfig
    data: DataConfig
    optim: OptimConfig
    parallel: ParallelConfig
    checkpoint: CheckpointConfig
    #: Held-out evaluation; None: none.
    evaluation: EvalConfig | None = None
    #: Export at completion; None: none.
    export: ExportConfig | None = None
    #: Low-rank adapters on a frozen model; None: every parameter trains.
    lora: LoraConfig | None = None
    #: Port of /metrics and /status on every rank; 0 lets each rank pick a free one.
    telemetry_port: int = 0
    #: File rank 0 appends one JSON line per step to (step, loss, seconds); None: no log.
    step_log: str | None = None
    #: torch.distributed timeout: far below torch's 30 minutes, so a dead peer is an error.
    collective_timeout_s: float = 60.0
    #: Intra-op threads per rank; fixed (not derived from the host) for reproducibility.
    threads: int = 1
    deterministic: bool = True
    #: Steps of every rank's section times rank 0 keeps in ``/status`` for the straggler
    #: detector (at least its window plus minSteps, and a poll interval's worth of steps).
    timing_history: int = 64
    #: Faults to inject (``shardwright run --inject``); empty in production.
    faults: tuple[Fault, ...] = ()
    #: The user's program every rank runs instead of the built-in trainer
    #: (``spec.workers[].command``; see workers/usercommand.py and the SDK); None: the trainer.
    command: tuple[str, ...] | None = None


class RankEnv(BaseModel):
    """This rank's place in the world, read once from the torch environment contract."""

    model_config = ConfigDict(frozen=True)

    rank: int
    world_size: int
    local_rank: int
    master_addr: str
    master_port: int
    telemetry_port: int | None = None
    #: The job's telemetry token (``TOKEN_ENV``); kept out of the repr, which logs print.
    token: str | None = Field(default=None, repr=False)

    @classmethod
    def from_environ(cls, environ: dict[str, str] | None = None) -> RankEnv:
        env = os.environ if environ is None else environ
        return cls(
            rank=int(env["RANK"]),
            world_size=int(env["WORLD_SIZE"]),
            local_rank=int(env.get("LOCAL_RANK", "0")),
            master_addr=env["MASTER_ADDR"],
            master_port=int(env["MASTER_PORT"]),
            telemetry_port=int(env[TELEMETRY_PORT_ENV]) if TELEMETRY_PORT_ENV in env else None,
            token=env.get(TOKEN_ENV) or None,
        )

    def to_environ(self) -> dict[str, str]:
        out = {
            "RANK": str(self.rank),
            "WORLD_SIZE": str(self.world_size),
            "LOCAL_RANK": str(self.local_rank),
            "MASTER_ADDR": self.master_addr,
            "MASTER_PORT": str(self.master_port),
        }
        if self.telemetry_port is not None:
            out[TELEMETRY_PORT_ENV] = str(self.telemetry_port)
        if self.token:
            out[TOKEN_ENV] = self.token
        return out
