"""The engine loop: schedule, execute, update; one iteration per ``step()``.

``Engine`` ties the three rooms together in one direction of calls: the scheduler plans
(using the KV cache manager), the model runner executes the plan, the scheduler takes the
sampled tokens back. It is single-threaded; the HTTP server drives it from one thread
(``server.EngineThread``). ``generate`` runs prompts to completion for tests and benchmarks.
"""

from __future__ import annotations

import dataclasses
import itertools
import time
from collections.abc import Sequence

from .config import EngineConfig, ServeConfig
from .kv_cache import KVCacheManager
from .request import Request, RequestStatus, SamplingParams
from .runner import ModelRunner
from .weights import build_model
from .scheduler import Scheduler


@dataclasses.dataclass(frozen=True)
class RequestOutput:
    """What one iteration added to one request."""

    request_id: str
    new_token_ids: tuple[int, ...]
    finished: bool
    #: ``stop`` or ``length`` (OpenAI's finish_reason), ``abort``; None while running.
    finish_reason: str | None
    num_prompt_tokens: int
    num_output_tokens: int
    num_cached_tokens: int


@dataclasses.dataclass(frozen=True)
class StepStats:
    """One iteration, for metrics: what ran and how full the cache is after it."""

    num_scheduled_tokens: int
    num_prefill_chunks: int
    num_decodes: int
    num_preempted: int
    num_running: int
    num_waiting: int
    kv_usage: float
    seconds: float


class Engine:
    """Continuous batching over the built-in model: add requests any time, ``step()`` to advance."""

    def __init__(self, runner: ModelRunner, config: EngineConfig) -> None:
        self.config = config
        self.scheduler = Scheduler(config)
        self.runner = runner
        self._ids = itertools.count()
        self.last_stats: StepStats | None = None

    @classmethod
    def from_config(cls, config: ServeConfig) -> Engine:
        model = build_model(config.model, seed=config.seed, dtype=config.dtype, device=config.device, checkpoint=config.checkpoint)
        runner = ModelRunner(model, num_blocks=config.engine.num_blocks, block_size=config.engine.block_size, seed=config.seed)
        return cls(runner, config.engine)

    @property
    def kv(self) -> KVCacheManager:
        return self.scheduler.kv

    def add_request(self, prompt_token_ids: Sequence[int], params: SamplingParams | None = None, request_id: str | None = None) -> Request:
        """Queue a prompt; raises ValueError for a prompt the model cannot take."""
        vocab = self.runner.model.cfg.vocab_size
        bad = [t for t in prompt_token_ids if not 0 <= t < vocab]
        if bad:
            raise ValueError(f"token id {bad[0]} is outside the vocabulary (0 .. {vocab - 1})")
        request = Request(request_id or f"req-{next(self._ids)}", list(prompt_token_ids), params or SamplingParams())
        self.scheduler.add_request(request)
        return request

    def abort(self, request_id: str) -> None:
        self.scheduler.abort(request_id)

    def has_unfinished(self) -> bool:
        return self.scheduler.has_unfinished()

    def step(self) -> list[RequestOutput]:
        """One iteration; outputs for every request that got a token or finished."""
        started = time.perf_counter()
        plan = self.scheduler.schedule()
        before = {c.request_id: c.num_output_tokens for c in plan.chunks if c.sample}
        sampled = self.runner.execute(plan)
        done = {r.request_id: r for r in self.scheduler.update_from_output(plan, sampled)}
        outputs = []
        for request_id in before:
            request = done.get(request_id) or self.scheduler.requests.get(request_id)
            if request is None:
                continue  # aborted while the iteration ran
            new = request.output_token_ids[before[request_id]:]
            outputs.append(RequestOutput(
                request_id=request_id, new_token_ids=tuple(new), finished=request.is_finished,
                finish_reason=request.status.value if request.is_finished else None,
                num_prompt_tokens=request.num_prompt_tokens, num_output_tokens=len(request.output_token_ids),
                num_cached_tokens=request.num_cached_tokens,
            ))
        self.last_stats = StepStats(
            num_scheduled_tokens=plan.num_scheduled_tokens,
            num_prefill_chunks=sum(c.is_prefill for c in plan.chunks),
            num_decodes=sum(not c.is_prefill for c in plan.chunks),
            num_preempted=len(plan.preempted),
            num_running=self.scheduler.num_running, num_waiting=self.scheduler.num_waiting,
            kv_usage=self.kv.usage, seconds=time.perf_counter() - started,
        )
        return outputs

    def generate(self, prompts: Sequence[Sequence[int]], params: SamplingParams | Sequence[SamplingParams] | None = None) -> list[list[int]]:
        """Run ``prompts`` together to completion; their output token ids, in order."""
        params = params if isinstance(params, Sequence) else [params or SamplingParams()] * len(prompts)
        requests = [self.add_request(p, sp) for p, sp in zip(prompts, params, strict=True)]
        while self.has_unfinished():
            self.step()
        assert all(r.status is not RequestStatus.WAITING for r in requests)
        return [list(r.output_token_ids) for r in requests]
