"""The model runner: executes one ``SchedulerOutput`` and samples the next tokens.

It owns the model, the paged K/V tensors and the per-request random generators, and makes
no decisions: which tokens run, where their K/V go and who samples all come in the record.

Sampling: ``temperature == 0`` is the argmax; otherwise ``softmax(logits / T)`` cut to
``top_k`` and to the ``top_p`` nucleus, drawn with the request's own generator when it has a
seed (so the draw does not depend on the batch) and with the runner's otherwise.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..model import Transformer
from . import paged
from .request import SamplingParams
from .scheduler import SchedulerOutput

class ModelRunner:
    """``execute(plan) -> {request_id: next token}`` for the chunks that sample."""

    def __init__(self, model: Transformer, *, num_blocks: int, block_size: int, seed: int = 0) -> None:
        param = next(model.parameters())
        self.model = model
        self.device = param.device
        self.cache = paged.PagedKVCache(model, num_blocks=num_blocks, block_size=block_size, dtype=param.dtype, device=param.device)
        self._generators: dict[str, torch.Generator] = {}
        self._shared = torch.Generator(device=self.device).manual_seed(seed)

    @torch.inference_mode()
    def execute(self, plan: SchedulerOutput) -> dict[str, int]:
        for request_id in plan.finished:
            self._generators.pop(request_id, None)
        if plan.is_empty:
            return {}
        layout = paged.BatchLayout.build(plan.chunks, self.cache, self.device)
        logits = paged.forward(self.model, self.cache, layout)
        rows = [i for i, c in enumerate(plan.chunks) if c.sample]
        chunks = [plan.chunks[i] for i in rows]
        tokens = sample(logits[rows].float() if logits.dtype == torch.bfloat16 else logits[rows],
                        [c.params for c in chunks], [self._generator(c.request_id, c.params) for c in chunks])
        return {c.request_id: t for c, t in zip(chunks, tokens, strict=True)}

    def _generator(self, request_id: str, params: SamplingParams) -> torch.Generator | None:
        if params.greedy:
            return None
        if params.seed is None:
            return self._shared
        gen = self._generators.get(request_id)
        if gen is None:
            gen = self._generators[request_id] = torch.Generator(device=self.device).manual_seed(params.seed)
        return gen


def sample(logits: torch.Tensor, params: Sequence[SamplingParams], generators: Sequence[torch.Generator | None]) -> list[int]:
    """One token per row of ``logits [R, vocab]``; rows are sampled one by one, in order."""
    out = []
    for row, p, gen in zip(logits, params, generators, strict=True):
        if p.greedy:
            out.append(int(row.argmax()))
            continue
        scaled = (row - row.max()) / p.temperature  # the top logit 0: a tiny temperature gives -inf, never inf - inf = nan
        if 0 < p.top_k < scaled.numel():
            kth = scaled.topk(p.top_k).values[-1]
            scaled = scaled.masked_fill(scaled < kth, float("-inf"))
        probs = scaled.softmax(-1)
        if p.top_p < 1:
            sorted_probs, order = probs.sort(descending=True)
            # Keep the smallest set whose mass reaches top_p (the top token always stays).
            drop = sorted_probs.cumsum(-1) - sorted_probs >= p.top_p
            probs = probs.scatter(0, order, sorted_probs.masked_fill(drop, 0.0))
        out.append(int(torch.multinomial(probs, 1, generator=gen)))
    return out
