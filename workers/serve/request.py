"""One generation request as the engine sees it: its tokens, its sampling and its progress.

The three rooms of the engine share this record and nothing else: the scheduler moves it
between ``waiting`` and ``running`` and advances ``num_computed_tokens``; the KV cache
manager keeps its blocks by ``request_id`` and hashes its full blocks (``block_hashes``);
the model runner only reads the token ids and sampling parameters it is handed.
"""

from __future__ import annotations

import dataclasses
import enum
import time


class RequestStatus(enum.StrEnum):
    WAITING = "waiting"
    RUNNING = "running"
    #: Taken off the running list to free KV blocks; back at the head of the queue and
    #: recomputed from its tokens (prompt plus output so far) when it is scheduled again.
    PREEMPTED = "preempted"
    FINISHED_STOPPED = "stop"
    FINISHED_LENGTH = "length"
    FINISHED_ABORTED = "abort"

    @property
    def finished(self) -> bool:
        return self in (RequestStatus.FINISHED_STOPPED, RequestStatus.FINISHED_LENGTH, RequestStatus.FINISHED_ABORTED)


@dataclasses.dataclass(frozen=True)
class SamplingParams:
    """How to pick each next token, and when to stop.

    ``temperature`` 0 is greedy (argmax); above 0 samples from ``softmax(logits / T)``
    restricted to ``top_k`` tokens and the ``top_p`` nucleus. With a ``seed`` the draws come
    from the request's own generator, so the tokens do not depend on what else is batched.
    """

    max_tokens: int = 16
    temperature: float = 0.0
    top_p: float = 1.0
    #: 0 or less: no top-k cut.
    top_k: int = 0
    seed: int | None = None
    #: Token ids that end the generation (the stop token is kept in the output).
    stop_token_ids: tuple[int, ...] = ()
    #: Keep generating past the stop tokens (benchmarks that want exact lengths).
    ignore_eos: bool = False

    def __post_init__(self) -> None:
        if self.max_tokens < 1:
            raise ValueError(f"max_tokens must be at least 1, got {self.max_tokens}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be 0 (greedy) or more, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


@dataclasses.dataclass(eq=False)
class Request:
    """A prompt and its growing output; ``all_token_ids`` is what the KV cache holds."""

    request_id: str
    prompt_token_ids: list[int]
    params: SamplingParams = dataclasses.field(default_factory=SamplingParams)
    arrival_time: float = dataclasses.field(default_factory=time.monotonic)
    status: RequestStatus = RequestStatus.WAITING
    output_token_ids: list[int] = dataclasses.field(default_factory=list)
    #: Tokens whose K/V are in the cache (computed, or found by prefix caching).
    num_computed_tokens: int = 0
    #: Prompt tokens found in the prefix cache when the request was first scheduled.
    num_cached_tokens: int = 0
    #: Chained hashes of this request's full blocks, filled by the KV cache manager.
    block_hashes: list[bytes] = dataclasses.field(default_factory=list)
    num_preemptions: int = 0

    def __post_init__(self) -> None:
        if not self.prompt_token_ids:
            raise ValueError("a request needs at least one prompt token")

    @property
    def all_token_ids(self) -> list[int]:
        return self.prompt_token_ids + self.output_token_ids

    @property
    def num_tokens(self) -> int:
        return len(self.prompt_token_ids) + len(self.output_token_ids)

    @property
    def num_prompt_tokens(self) -> int:
        return len(self.prompt_token_ids)

    @property
    def is_finished(self) -> bool:
        return self.status.finished

    def append_output(self, token: int) -> None:
        self.output_token_ids.append(token)

    def stop_reason(self, max_model_len: int) -> RequestStatus | None:
        """Why the request is done after its last token, or None to keep going."""
        last = self.output_token_ids[-1]
        if not self.params.ignore_eos and last in self.params.stop_token_ids:
            return RequestStatus.FINISHED_STOPPED
        if len(self.output_token_ids) >= self.params.max_tokens or self.num_tokens >= max_model_len:
            return RequestStatus.FINISHED_LENGTH
        return None
