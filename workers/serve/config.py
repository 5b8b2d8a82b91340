"""What a serving replica needs to run, rendered by the operator. pydantic only: no torch here.

``EngineConfig`` sizes the built-in engine (token budget, KV blocks, prefix caching);
``ServeConfig`` adds the model and where the replica listens. The replica reads one back
from JSON (``ServeConfig.model_validate_json``), as a training rank reads ``WorkerConfig``.
"""

from __future__ import annotations

from typing import Literal, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

from ..config import ModelConfig


class _Config(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class EngineConfig(_Config):
    """The engine's limits; defaults fit the tiny and small presets on a CPU."""

    #: Tokens per KV block: the unit of allocation and of prefix caching.
    block_size: int = Field(default=16, ge=1)
    #: KV blocks per replica: ``num_blocks * block_size`` tokens of cache across requests.
    num_blocks: int = Field(default=256, ge=1)
    #: Token budget of one iteration (SARATHI's chunk size): running decodes plus prefill chunks.
    max_num_batched_tokens: int = Field(default=256, ge=1)
    #: Requests running at once (the decode batch), waiting ones beyond it queue.
    max_num_seqs: int = Field(default=64, ge=1)
    #: Longest prompt plus output a request may reach.
    max_model_len: int = Field(default=512, ge=2)
    #: Split long prompts into chunks under the budget; off: a prompt is prefilled whole.
    enable_chunked_prefill: bool = True
    #: Reuse the K/V of full blocks another request already computed (hash of the prefix).
    enable_prefix_caching: bool = True

    @model_validator(mode="after")
    def _check(self) -> Self:
        if self.num_blocks * self.block_size < self.max_model_len:
            raise ValueError(
                f"num_blocks * block_size ({self.num_blocks} * {self.block_size}) must hold max_model_len "
                f"({self.max_model_len}) tokens: one request alone must always fit"
            )
        if not self.enable_chunked_prefill and self.max_num_batched_tokens < self.max_model_len:
            raise ValueError(
                f"without chunked prefill max_num_batched_tokens ({self.max_num_batched_tokens}) must be at least "
                f"max_model_len ({self.max_model_len}): a whole prompt is prefilled in one iteration"
            )
        return self


class ServeConfig(_Config):
    """One serving replica: its model, its engine and its HTTP endpoint."""

    pool: str = "default"
    namespace: str = "default"
    replica: int = 0
    #: Name clients put in ``"model"``; requests naming another model get 404.
    model_name: str = "shardwright-tiny"
    model: ModelConfig
    #: A TrainingJob checkpoint (a committed step-N folder, or the job's checkpoint directory
    #: for its newest one) to load the weights from; None: weights drawn from ``seed``.
    checkpoint: str | None = None
    seed: int = 0
    dtype: Literal["float32", "float64", "bfloat16"] = "float32"
    #: Where the model and its KV cache live.
    device: Literal["cpu", "cuda"] = "cpu"
    engine: EngineConfig = EngineConfig()
    host: str = "127.0.0.1"
    #: 0 picks a free port (printed and written to ``port_file``).
    port: int = Field(default=0, ge=0, le=65535)
    port_file: str | None = None
    #: On SIGTERM, seconds the replica keeps serving its running requests (taking no new ones).
    drain_timeout_s: float = Field(default=30.0, ge=0)
    threads: int = 1
    #: Fault injection: every engine iteration sleeps this long first (a slow replica in tests).
    iteration_delay_s: float = Field(default=0.0, ge=0)
