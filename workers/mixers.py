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

from .config import ModelConfig


@dataclasses.dataclass(frozen=True)
class SequenceContext:
    """This rank's part of the sequence: ``degree`` ranks of ``group`` split each sample."""

    group: dist.ProcessGroup | None = None
    degree: int = 1
    #: Softmax kernel when sharded: ring, zigzag, ulysses or tokenring.
    kind: str = "zigzag"

    @property
    def layout(self) -> str:
        """How tokens are dealt to ranks: zigzag ring wants chunks r and 2P-1-r."""
        return "zigzag" if self.kind == "zigzag" else "contiguous"


class SoftmaxAttention(nn.Module):
    """Causal multi-head attention with grouped KV heads and rotary positions."""

    def __init__(self, cfg: ModelConfig, rotary: nn.Module, ctx: SequenceContext) -> None:
        super().__init__()
        self.heads, self.kv_heads, self.head_dim = cfg.heads, cfg.kv_heads, cfg.head_dim
        self.q = nn.Linear(cfg.dim, cfg.heads * cfg.head_dim, bias=False)
        self.kv = nn.Linear(cfg.dim, 2 * cfg.kv_heads * cfg.head_dim, bias=False)
        self.out = nn.Linear(cfg.heads * cfg.head_dim, cfg.dim, bias=False)
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
    raise ValueError(f"sequence-parallel softmax attention ({ctx.kind}) is not available yet")


def build_mixer(kind: str, cfg: ModelConfig, rotary: nn.Module, ctx: SequenceContext) -> nn.Module:
    if kind == "softmax":
        return SoftmaxAttention(cfg, rotary, ctx)
    raise ValueError(f"unknown token mixer {kind!r}")
