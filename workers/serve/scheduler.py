"""The scheduler: one ``schedule()`` per iteration fills a token budget, SARATHI-style.

Running requests come first, in arrival order: each decode takes one token of the budget,
and a request still in its prompt takes its next chunk. What budget is left goes to waiting
requests, whose prompts are cut into chunks (prefix-cache hits are skipped, not
recomputed). When the KV cache cannot hold a running request's next tokens, the most
recently admitted running request is preempted: its blocks are freed and it is queued
again at the head, to be recomputed (cheaply, from its own cached blocks when they survive).

The record returned says, per request, which tokens to run at which positions, its block
table, and whether to sample; ``update_from_output`` takes the sampled tokens back. The
scheduler never touches tensors; the model runner never decides anything.
"""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Mapping

from .config import EngineConfig
from .kv_cache import KVCacheManager
from .request import Request, RequestStatus, SamplingParams


@dataclasses.dataclass(frozen=True)
class ScheduledChunk:
    """Tokens ``start .. start + len(token_ids)`` of one request, to run in this iteration."""

    request_id: str
    token_ids: tuple[int, ...]
    #: Position of ``token_ids[0]``; the K/V of positions ``0 .. start`` are in the cache.
    start: int
    #: The request's whole block table (block ``i`` holds positions ``i*bs .. (i+1)*bs``).
    block_ids: tuple[int, ...]
    #: The chunk ends at the request's last token: sample the next token from its logits.
    sample: bool
    params: SamplingParams
    #: Output tokens so far: seeded sampling draws number ``num_output_tokens`` next.
    num_output_tokens: int

    @property
    def is_prefill(self) -> bool:
        return not (self.sample and len(self.token_ids) == 1 and self.num_output_tokens > 0)


@dataclasses.dataclass(frozen=True)
class SchedulerOutput:
    """One iteration's plan: the chunks in order, and who left since the last plan."""

    chunks: tuple[ScheduledChunk, ...]
    preempted: tuple[str, ...] = ()
    #: Requests finished or aborted since the previous iteration (the runner drops their state).
    finished: tuple[str, ...] = ()

    @property
    def num_scheduled_tokens(self) -> int:
        return sum(len(c.token_ids) for c in self.chunks)

    @property
    def is_empty(self) -> bool:
        return not self.chunks


class Scheduler:
    """Waiting queue, running list and the per-iteration plan; owns the KV cache manager."""

    def __init__(self, config: EngineConfig, kv: KVCacheManager | None = None) -> None:
        self.config = config
        self.kv = kv or KVCacheManager(
            num_blocks=config.num_blocks, block_size=config.block_size, enable_prefix_caching=config.enable_prefix_caching
        )
        self.waiting: collections.deque[Request] = collections.deque()
        self.running: list[Request] = []
        self.requests: dict[str, Request] = {}
        self._finished_ids: list[str] = []

    def add_request(self, request: Request) -> None:
        if request.request_id in self.requests:
            raise ValueError(f"request id {request.request_id!r} is already in the engine")
        if request.num_tokens >= self.config.max_model_len:
            raise ValueError(
                f"the prompt has {request.num_tokens} tokens; this model takes at most "
                f"{self.config.max_model_len - 1} so that one token can be generated"
            )
        self.requests[request.request_id] = request
        self.waiting.append(request)

    def abort(self, request_id: str) -> Request | None:
        request = self.requests.get(request_id)
        if request is not None:
            self._finish(request, RequestStatus.FINISHED_ABORTED)
        return request

    @property
    def num_running(self) -> int:
        return len(self.running)

    @property
    def num_waiting(self) -> int:
        return len(self.waiting)

    def has_unfinished(self) -> bool:
        return bool(self.waiting or self.running)

    def schedule(self) -> SchedulerOutput:
        """Plan one iteration within ``max_num_batched_tokens``: running first, then waiting."""
        budget = self.config.max_num_batched_tokens
        chunks: list[ScheduledChunk] = []
        preempted: list[str] = []

        i = 0
        while i < len(self.running) and budget > 0:
            request = self.running[i]
            n = min(request.num_tokens - request.num_computed_tokens, budget)
            while self.kv.allocate_slots(request, n) is None:
                victim = self.running.pop()
                self._preempt(victim)
                preempted.append(victim.request_id)
                if victim is request:
                    break
            if request.status is not RequestStatus.RUNNING:
                break  # it preempted itself: everyone after it is gone too
            chunks.append(self._chunk(request, n))
            budget -= n
            i += 1

        # Admit waiting requests only when nobody had to make room this iteration.
        while not preempted and self.waiting and budget > 0 and len(self.running) < self.config.max_num_seqs:
            request = self.waiting[0]
            hits, num_hit = self.kv.get_computed_blocks(request)
            n = request.num_tokens - num_hit
            if not self.config.enable_chunked_prefill and n > budget:
                break  # the whole prompt waits for an iteration with room for it
            n = min(n, budget)
            if self.kv.allocate_slots(request, n, hits) is None:
                break
            self.waiting.popleft()
            self.kv.record_lookup(request.num_tokens, num_hit)
            if request.status is RequestStatus.WAITING:
                request.num_cached_tokens = num_hit
            request.num_computed_tokens = num_hit
            request.status = RequestStatus.RUNNING
            self.running.append(request)
            chunks.append(self._chunk(request, n))
            budget -= n

        finished, self._finished_ids = tuple(self._finished_ids), []
        return SchedulerOutput(chunks=tuple(chunks), preempted=tuple(preempted), finished=finished)

    def update_from_output(self, output: SchedulerOutput, sampled: Mapping[str, int]) -> list[Request]:
        """Advance every scheduled request, append its sampled token; return those that finished."""
        done = []
        for chunk in output.chunks:
            request = self.requests.get(chunk.request_id)
            if request is None or request.status is not RequestStatus.RUNNING:
                continue  # aborted while the iteration ran
            request.num_computed_tokens += len(chunk.token_ids)
            if not chunk.sample:
                continue
            request.append_output(sampled[chunk.request_id])
            reason = request.stop_reason(self.config.max_model_len)
            if reason is not None:
                self._finish(request, reason)
                done.append(request)
        return done

    def _chunk(self, request: Request, n: int) -> ScheduledChunk:
        start = request.num_computed_tokens
        return ScheduledChunk(
            request_id=request.request_id,
            token_ids=tuple(request.all_token_ids[start : start + n]),
            start=start,
            block_ids=tuple(self.kv.block_ids(request.request_id)),
            sample=start + n == request.num_tokens,
            params=request.params,
            num_output_tokens=len(request.output_token_ids),
        )

    def _preempt(self, request: Request) -> None:
        self.kv.free(request)
        request.status = RequestStatus.PREEMPTED
        request.num_computed_tokens = 0
        request.num_preemptions += 1
        self.waiting.appendleft(request)

    def _finish(self, request: Request, status: RequestStatus) -> None:
        if request.is_finished:
            return
        if request in self.running:
            self.running.remove(request)
        elif request in self.waiting:
            self.waiting.remove(request)
        request.status = status
        self.kv.free(request)
        del self.requests[request.request_id]
        self._finished_ids.append(request.request_id)
