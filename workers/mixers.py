"""Token mixers (softmax attention, linear-attention recurrences) and how they run sharded.

A ``SequenceContext`` says whether this rank holds a whole sequence or a shard of it; the
mixer picks the matching kernel: plain SDPA on a whole sequence, a sequence-parallel
kernel from ``shardwright.kernels`` on a shard. With ``segments`` (document ids of a packed
sample) no mixer lets a token see another document.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from shardwright.kernels import attention as sp_attention

from .config import ModelConfig, sequence_layout
from .linear_attention import LinearAttention


@dataclasses.dataclass(frozen=True)
class SequenceContext:
    """This rank's part of the sequence: ``degree`` ranks of ``group`` split each sample."""

    group: dist.ProcessGroup | None = None
    degree: int = 1
    #: Softmax kernel when sharded: ring, zigzag, ulysses or tokenring.
    kind: str = "zigzag"

    @property
    def layout(self) -> str:
        return sequence_layout(self.kind)

    def shard(self, x: torch.Tensor, dim: int) -> torch.Tensor:
        """This rank's tokens of a full-sequence tensor, in the kernels' layout."""
        if self.degree == 1:
            return x
        return sp_attention.shard_sequence(x, group=self.group, layout=self.layout, dim=dim)


class SoftmaxAttention(nn.Module):
    """Causal multi-head attention with grouped KV heads and rotary positions."""

    def __init__(self, cfg: ModelConfig, rotary: nn.Module, ctx: SequenceContext) -> None:
        super().__init__()
        self.heads, self.kv_heads, self.head_dim = cfg.heads, cfg.kv_heads, cfg.head_dim
        self.q = nn.Linear(cfg.dim, cfg.heads * cfg.head_dim, bias=cfg.qkv_bias)
        self.kv = nn.Linear(cfg.dim, 2 * cfg.kv_heads * cfg.head_dim, bias=cfg.qkv_bias)
        self.out = nn.Linear(cfg.heads * cfg.head_dim, cfg.dim, bias=cfg.out_bias)
        self.rotary = rotary
        self.ctx = ctx

    def forward(self, x: torch.Tensor, positions: torch.Tensor, segments: torch.Tensor | None = None) -> torch.Tensor:
        b, t, _ = x.shape
        q = self.q(x).view(b, t, self.heads, self.head_dim).transpose(1, 2)
        k, v = self.kv(x).view(b, t, 2, self.kv_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k = self.rotary(q, positions), self.rotary(k, positions)
        o = attend(q, k, v, self.ctx, segments)
        return self.out(o.transpose(1, 2).reshape(b, t, -1))


def attend(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, ctx: SequenceContext, segments: torch.Tensor | None = None
) -> torch.Tensor:
    """Causal attention of ``[B, H, T, D]`` tensors, sharded along T when ``ctx`` says so;
    with ``segments [B, T]`` a query sees only keys of its own document."""
    if ctx.degree == 1:
        gqa = q.shape[1] != k.shape[1]
        if segments is None:
            return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=gqa)
        if q.device.type == "cpu":  # computes only the pairs a document needs: bench/packing.py
            return attend_each_document(q, k, v, segments)
        # On an accelerator one masked call beats a launch per document (and reads no ids back).
        return F.scaled_dot_product_attention(q, k, v, attn_mask=document_mask(segments), enable_gqa=gqa)
    # The kernels take segments only when given: without, their calls stay as they were.
    docs = {} if segments is None else {"segments": segments}
    if ctx.kind in ("ring", "zigzag"):
        return sp_attention.ring_attention(q, k, v, group=ctx.group, causal=True, layout=ctx.layout, **docs)
    if ctx.kind == "ulysses":
        return sp_attention.ulysses_attention(q, k, v, group=ctx.group, causal=True, **docs)
    if ctx.kind == "tokenring":
        return sp_attention.tokenring_attention(q, k, v, group=ctx.group, causal=True, **docs)
    raise ValueError(f"unknown sequence-parallel softmax kernel {ctx.kind!r}")


def attend_each_document(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, segments: torch.Tensor) -> torch.Tensor:
    """Causal attention of a whole packed sequence, one SDPA call per document (a run of
    equal ``segments [B, T]``): no score is computed across documents or for padding's
    queries against real keys."""
    rows = []
    for b in range(q.shape[0]):
        lengths = torch.unique_consecutive(segments[b], return_counts=True)[1].tolist()
        parts = zip(*(x[b : b + 1].split(lengths, dim=2) for x in (q, k, v)))
        rows.append(torch.cat([F.scaled_dot_product_attention(*qkv, is_causal=True, enable_gqa=q.shape[1] != k.shape[1]) for qkv in parts], dim=2))
    return torch.cat(rows)


def document_mask(segments: torch.Tensor) -> torch.Tensor:
    """Boolean ``[B, 1, T, T]`` mask of a whole packed sequence: causal and within a document
    (every row keeps its diagonal, so no query is left without a key)."""
    t = segments.shape[-1]
    causal = torch.ones(t, t, dtype=torch.bool, device=segments.device).tril()
    return (segments[:, :, None] == segments[:, None, :]).logical_and_(causal)[:, None]


def build_mixer(kind: str, cfg: ModelConfig, rotary: nn.Module, ctx: SequenceContext) -> nn.Module:
    if kind == "softmax":
        return SoftmaxAttention(cfg, rotary, ctx)
    return LinearAttention(cfg, kind, ctx)
