"""What the router needs, rendered by the operator. pydantic only: no torch here."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

Policy = Literal["prefix-aware", "least-load", "round-robin"]


class RouterConfig(BaseModel):
    """The pool's front door: which model it serves, how it picks a replica, when it gives up."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    #: Name clients put in ``"model"`` (the replicas serve the same name).
    model_name: str = "shardwright-tiny"
    #: The served model's vocabulary (the byte tokenizer needs it to read text prompts).
    vocab_size: int = Field(default=260, ge=1)
    #: The served Hugging Face directory (path or URI), whose tokenizer.json and vocabulary
    #: the router reads prompts and writes text with; None: the byte tokenizer over vocab_size.
    tokenizer: str | None = None
    #: Longest prompt plus output, as the replicas' engine allows.
    max_model_len: int = Field(default=512, ge=2)
    #: The replicas' KV block size: prompts are hashed in blocks of this many tokens for prefix scoring.
    block_size: int = Field(default=16, ge=1)
    policy: Policy = "prefix-aware"
    #: Other replicas a failed request is tried on (before or after its first token).
    retries: int = Field(default=2, ge=0)
    #: A stream whose replica fails continues on another from its prompt plus the tokens sent.
    migrate_on_failure: bool = True
    #: Seconds a replica may send nothing before it is given up on (read timeout, not a total).
    request_timeout_s: float = Field(default=60.0, gt=0)
    #: Seconds to open a connection to a replica.
    connect_timeout_s: float = Field(default=2.0, gt=0)
    #: Seconds a request waits for a routable replica (a pool starting, or at zero) before a 503.
    hold_s: float = Field(default=30.0, ge=0)
    #: Seconds between the router's probes of every replica's ``/status``.
    probe_interval_s: float = Field(default=0.25, gt=0)
    host: str = "127.0.0.1"
    #: 0 picks a free port.
    port: int = Field(default=0, ge=0, le=65535)
