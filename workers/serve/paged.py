"""An incremental forward of the project's transformer over a paged (blocked) KV cache.

``workers.model.Transformer`` runs whole sequences; serving runs, per iteration, a flat
batch of N tokens taken from R requests (decodes: 1 token each; prefill chunks: many), each
token at its own position and each request with its own block table. This module runs the
same modules of the same model (embedding, norms, the softmax mixer's projections and
rotary, SwiGLU, head) on that flat batch; only attention differs: each token's K/V is
written to its slot in the cache, then each request's queries attend to the cache entries
of its positions ``0 .. start + i`` (causal across chunks and across cached prefixes).

Shapes: cache per layer ``[num_blocks, block_size, kv_heads, head_dim]`` for K and for V;
flat batch ``tokens [N]``, ``positions [N]``, ``slot_mapping [N]``; hidden ``[N, dim]``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from ..mixers import SoftmaxAttention
from ..model import Transformer
from .scheduler import ScheduledChunk


class PagedKVCache:
    """K and V tensors of every layer; slot ``b * block_size + j`` is block b's j-th token."""

    def __init__(self, model: Transformer, *, num_blocks: int, block_size: int, dtype: torch.dtype, device: torch.device | str = "cpu") -> None:
        for i, block in enumerate(model.blocks):
            if not isinstance(block.mixer, SoftmaxAttention):
                kind = model.cfg.layer_kinds[i]
                raise NotImplementedError(
                    f"the built-in engine serves softmax-attention layers only; layer {i} is {kind!r} "
                    "(caching a linear-attention state per block is not built yet)"
                )
        cfg = model.cfg
        shape = (num_blocks, block_size, cfg.kv_heads, cfg.head_dim)
        self.block_size = block_size
        self.k = [torch.zeros(shape, dtype=dtype, device=device) for _ in model.blocks]
        self.v = [torch.zeros(shape, dtype=dtype, device=device) for _ in model.blocks]

    def slots(self, block_ids: Sequence[int], positions: torch.Tensor) -> torch.Tensor:
        """Flat slot index of each position ``[T]`` of a request with block table ``block_ids``."""
        table = torch.as_tensor(block_ids, dtype=torch.long, device=positions.device)
        return table[positions // self.block_size] * self.block_size + positions % self.block_size


@dataclasses.dataclass(frozen=True)
class BatchLayout:
    """Where each request's tokens sit in the flat batch and in the cache."""

    tokens: torch.Tensor  # [N]
    positions: torch.Tensor  # [N]
    #: Slot each token's K/V is written to.
    slot_mapping: torch.Tensor  # [N]
    #: Request r's queries are rows ``query_start[r] .. query_start[r + 1]``.
    query_start: tuple[int, ...]  # [R + 1]
    #: Slots of request r's positions ``0 .. start + n`` (cached prefix plus this chunk).
    context_slots: tuple[torch.Tensor, ...]  # R x [L_r]
    starts: tuple[int, ...]  # [R]
    #: Row of each request's last token (its logits pick the next token).
    last_rows: torch.Tensor  # [R]
    #: Requests with one query token (decodes) attend together: their rows, their context
    #: slots padded to the longest with slot 0, and which of those slots are real.
    single_rows: torch.Tensor  # [Rd]
    single_slots: torch.Tensor  # [Rd, Lmax]
    single_valid: torch.Tensor  # [Rd, Lmax]
    #: Requests with several query tokens (prefill chunks) attend one by one.
    multi: tuple[int, ...]

    @classmethod
    def build(cls, chunks: Sequence[ScheduledChunk], cache: PagedKVCache, device: torch.device | str = "cpu") -> BatchLayout:
        tokens, positions, slots, context, starts, query_start = [], [], [], [], [], [0]
        for c in chunks:
            n = len(c.token_ids)
            pos = torch.arange(c.start, c.start + n, device=device)
            ctx = cache.slots(c.block_ids, torch.arange(c.start + n, device=device))
            tokens.append(torch.as_tensor(c.token_ids, dtype=torch.long, device=device))
            positions.append(pos)
            slots.append(ctx[c.start :])
            context.append(ctx)
            starts.append(c.start)
            query_start.append(query_start[-1] + n)
        single = [r for r, c in enumerate(chunks) if len(c.token_ids) == 1]
        longest = max((len(context[r]) for r in single), default=0)
        padded = torch.zeros(len(single), longest, dtype=torch.long, device=device)
        for i, r in enumerate(single):
            padded[i, : len(context[r])] = context[r]
        lengths = torch.tensor([len(context[r]) for r in single], dtype=torch.long, device=device)
        return cls(
            tokens=torch.cat(tokens), positions=torch.cat(positions), slot_mapping=torch.cat(slots),
            query_start=tuple(query_start), context_slots=tuple(context), starts=tuple(starts),
            last_rows=torch.tensor(query_start[1:], device=device) - 1,
            single_rows=torch.tensor([query_start[r] for r in single], dtype=torch.long, device=device),
            single_slots=padded, single_valid=torch.arange(longest, device=device)[None, :] < lengths[:, None],
            multi=tuple(r for r, c in enumerate(chunks) if len(c.token_ids) > 1),
        )


def paged_attention(mixer: SoftmaxAttention, x: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, layout: BatchLayout) -> torch.Tensor:
    """``x [N, dim] -> [N, dim]``: write this batch's K/V into the cache, then attend: all
    one-token queries (decodes) in one padded call, each prefill chunk on its own."""
    n = x.shape[0]
    h, kvh, d = mixer.heads, mixer.kv_heads, mixer.head_dim
    q = mixer.q(x).view(n, h, d).transpose(0, 1)  # [H, N, D]
    k, v = mixer.kv(x).view(n, 2, kvh, d).unbind(1)  # [N, KVH, D]
    q = mixer.rotary(q, layout.positions)
    k = mixer.rotary(k.transpose(0, 1), layout.positions).transpose(0, 1)
    k_flat, v_flat = k_cache.view(-1, kvh, d), v_cache.view(-1, kvh, d)
    # Every write of the layer lands before any read: a request that hit a block another
    # request fills in this very iteration reads it complete.
    k_flat[layout.slot_mapping] = k.to(k_flat.dtype)
    v_flat[layout.slot_mapping] = v.to(v_flat.dtype)
    out = torch.empty(h, n, d, dtype=q.dtype, device=q.device)
    if layout.multi != tuple(range(len(layout.starts))):  # some one-token queries: one call for all
        keys = k_flat[layout.single_slots].permute(0, 2, 1, 3).to(q.dtype)  # [Rd, KVH, Lmax, D]
        values = v_flat[layout.single_slots].permute(0, 2, 1, 3).to(q.dtype)
        queries = q[:, layout.single_rows].transpose(0, 1)[:, :, None]  # [Rd, H, 1, D]
        mask = layout.single_valid[:, None, None, :]  # [Rd, 1, 1, Lmax]
        single = F.scaled_dot_product_attention(queries, keys, values, attn_mask=mask, enable_gqa=h != kvh)
        out[:, layout.single_rows] = single[:, :, 0].transpose(0, 1)
    for r in layout.multi:
        ctx = layout.context_slots[r]
        a, b = layout.query_start[r], layout.query_start[r + 1]
        keys, values = k_flat[ctx].transpose(0, 1), v_flat[ctx].transpose(0, 1)  # [KVH, L, D]
        query_pos = layout.starts[r] + torch.arange(b - a, device=q.device)
        mask = torch.arange(len(ctx), device=q.device)[None, :] <= query_pos[:, None]  # [n_r, L]
        out[:, a:b] = F.scaled_dot_product_attention(
            q[None, :, a:b], keys[None].to(q.dtype), values[None].to(q.dtype), attn_mask=mask, enable_gqa=h != kvh
        )[0]
    return mixer.out(out.transpose(0, 1).reshape(n, h * d))


def forward(model: Transformer, cache: PagedKVCache, layout: BatchLayout) -> torch.Tensor:
    """Logits ``[R, vocab]`` at each request's last token of this iteration.

    Only those R rows go through the final norm and the head; a chunk that does not end its
    prompt still gets a row, which the runner ignores.
    """
    x = model.embed(layout.tokens)
    for i, block in enumerate(model.blocks):
        x = x + paged_attention(block.mixer, block.mixer_norm(x), cache.k[i], cache.v[i], layout)
        x = x + block.ffn(block.ffn_norm(x))
    return model.head(model.norm(x[layout.last_rows]))
