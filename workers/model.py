"""A small decoder-only transformer with modern defaults: RMSNorm, rotary positions, SwiGLU.

Each layer's token mixer is chosen by ``ModelConfig.layer_kinds`` and built by
``workers.mixers``, which also decides how a mixer runs when the sequence is split across
ranks. Positions are passed in explicitly: with sequence parallelism a rank holds tokens
whose global positions are not ``0..T-1``, and in a packed sample they restart at 0 with
each document. ``segments`` (document ids) keep every mixer inside a document.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .config import ModelConfig, RopeScaling
from .mixers import SequenceContext, build_mixer


class Rotary(nn.Module):
    """Rotary position embedding applied to ``[B, H, T, D]`` queries and keys.

    Channels ``2i`` and ``2i+1`` of a head rotate together by frequency ``i`` (Hugging Face
    pairs ``i`` with ``i + D/2`` instead: ``workers.hf.weights`` permutes q and k to match).
    """

    def __init__(self, head_dim: int, theta: float, scaling: RopeScaling | None = None) -> None:
        super().__init__()
        inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
        if scaling is not None:
            inv_freq = scaled_frequencies(inv_freq, scaling)
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def forward(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """``positions``: ``[T]`` shared by the batch, or ``[B, T]`` (packed documents)."""
        angles = positions.to(torch.float32)[..., None] * self.inv_freq  # [T, D/2] or [B, T, D/2]
        if angles.dim() == 3:
            angles = angles[:, None]  # [B, 1, T, D/2]: the same for every head
        cos, sin = angles.cos().to(x.dtype), angles.sin().to(x.dtype)
        x1, x2 = x[..., 0::2], x[..., 1::2]
        out = torch.stack((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)
        return out.flatten(-2)


def scaled_frequencies(inv_freq: torch.Tensor, scaling: RopeScaling) -> torch.Tensor:
    """``inv_freq [D/2]`` stretched for long context (Llama 3.1's rule or plain linear)."""
    if scaling.type == "linear":
        return inv_freq / scaling.factor
    low_wavelen = scaling.original_max_positions / scaling.low_freq_factor
    high_wavelen = scaling.original_max_positions / scaling.high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    # Long wavelengths are divided by the factor, short ones kept, the band between blended.
    scaled = torch.where(wavelen > low_wavelen, inv_freq / scaling.factor, inv_freq)
    smooth = (scaling.original_max_positions / wavelen - scaling.low_freq_factor) / (
        scaling.high_freq_factor - scaling.low_freq_factor
    )
    blended = (1 - smooth) * scaled / scaling.factor + smooth * scaled
    medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
    return torch.where(medium, blended, scaled)


class SwiGLU(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.gate = nn.Linear(dim, hidden, bias=False)
        self.up = nn.Linear(dim, hidden, bias=False)
        self.down = nn.Linear(hidden, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(F.silu(self.gate(x)) * self.up(x))


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig, kind: str, rotary: Rotary, ctx: SequenceContext) -> None:
        super().__init__()
        self.mixer_norm = nn.RMSNorm(cfg.dim, eps=cfg.norm_eps)
        self.mixer = build_mixer(kind, cfg, rotary, ctx)
        self.ffn_norm = nn.RMSNorm(cfg.dim, eps=cfg.norm_eps)
        self.ffn = SwiGLU(cfg.dim, cfg.ffn_dim)

    def forward(self, x: torch.Tensor, positions: torch.Tensor, segments: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.mixer(self.mixer_norm(x), positions, segments)
        return x + self.ffn(self.ffn_norm(x))


class Transformer(nn.Module):
    """``tokens [B, T] -> logits [B, T, vocab]``.

    ``positions`` are ``[T]`` global positions, or ``[B, T]`` restarting at each document of
    a packed sample; ``segments [B, T]`` (int64, this rank's tokens' document ids, in the
    tokens' layout) keep attention and recurrences within a document. ``None``: one
    document per sample, as before.
    """

    def __init__(self, cfg: ModelConfig, ctx: SequenceContext | None = None) -> None:
        super().__init__()
        ctx = ctx or SequenceContext()
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.dim)
        rotary = Rotary(cfg.head_dim, cfg.rope_theta, cfg.rope_scaling)
        self.blocks = nn.ModuleList(Block(cfg, kind, rotary, ctx) for kind in cfg.layer_kinds)
        self.norm = nn.RMSNorm(cfg.dim, eps=cfg.norm_eps)
        self.head = nn.Linear(cfg.dim, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.head.weight = self.embed.weight
        self.apply(_init)

    def forward(self, tokens: torch.Tensor, positions: torch.Tensor, segments: torch.Tensor | None = None) -> torch.Tensor:
        x = self.embed(tokens)
        for block in self.blocks:
            x = block(x, positions, segments)
        return self.head(self.norm(x))


def _init(module: nn.Module) -> None:
    if isinstance(module, nn.Linear | nn.Embedding):
        nn.init.normal_(module.weight, std=0.02)
    if isinstance(module, nn.Linear) and module.bias is not None:
        nn.init.zeros_(module.bias)


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
