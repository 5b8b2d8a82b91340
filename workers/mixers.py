"""Token mixers (softmax attention, linear-attention recurrences) and how they run sharded.

A ``SequenceContext`` says whether this rank holds a whole sequence or a shard of it; the
mixer picks the matching kernel: plain SDPA on a whole sequence, a sequence-parallel
kernel from ``shardwright.kernels`` on a shard.
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

    def forward(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        q = self.q(x).view(b, t, self.heads, self.head_dim).transpose(1, 2)
        k, v = self.kv(x).view(b, t, 2, self.kv_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k = self.rotary(q, positions), self.rotary(k, positions)
        o = attend(q, k, v, self.ctx)
        return self.out(o.transpose(1, 2).reshape(b, t, -1))


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, ctx: SequenceContext) -> torch.Tensor:
    """Causal attention of ``[B, H, T, D]`` tensors, sharded along T when ``ctx`` says so."""
    if ctx.degree == 1:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=q.shape[1] != k.shape[1])
    if ctx.kind in ("ring", "zigzag"):
        return sp_attention.ring_attention(q, k, v, group=ctx.group, causal=True, layout=ctx.layout)
    if ctx.kind == "ulysses":
        return sp_attention.ulysses_attention(q, k, v, group=ctx.group, causal=True)
    if ctx.kind == "tokenring":
        return sp_attention.tokenring_attention(q, k, v, group=ctx.group, causal=True)
    raise ValueError(f"unknown sequence-parallel softmax kernel {ctx.kind!r}")


def build_mixer(kind: str, cfg: ModelConfig, rotary: nn.Module, ctx: SequenceContext) -> nn.Module:
    if kind == "softmax":
        return SoftmaxAttention(cfg, rotary, ctx)
    return LinearAttention(cfg, kind, ctx)
