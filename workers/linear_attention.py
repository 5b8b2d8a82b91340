"""Linear-attention token mixers: Gated DeltaNet, KDA, KLA and Gated DeltaNet-2.

One module serves all four; they differ only in their gates (shapes ``[B, T, H, ...]``):

============  ======================  ==========================================
kind          decay ``g`` (log)       step
============  ======================  ==========================================
gated-delta   per head ``[.., H]``    ``beta = sigmoid(b)``            ``[.., H]``
kda           per key channel ``K``   ``beta = sigmoid(b)``            ``[.., H]``
kla           per head                ``beta = eta / (|k|^2 + eps)``, unnormalised keys
gdn2          per key channel         erase gate ``[.., K]``, write gate ``[.., V]``
============  ======================  ==========================================

Decays follow flash-linear-attention's layers: ``g = -exp(A_log) * softplus(a + dt_bias)``.
On a whole sequence the chunked kernels run; on a sequence shard, LASP-2 (one all-gather of
the per-rank states) carries the recurrence across ranks. With ``segments`` (document ids
of a packed sample) the kernels restart the state at each document's first token. Keys
and queries are L2-normalised (except KLA's keys, whose norm its step divides out), and the
output is RMS-normalised per head and gated, as in the reference layers.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from shardwright.kernels import linear as kl

from .config import LINEAR_KINDS, ModelConfig
#: Chunk length of the chunked kernels (tokens); shorter shards use one partial chunk.
CHUNK = 64


class LinearAttention(nn.Module):
    def __init__(self, cfg: ModelConfig, kind: str, ctx) -> None:
        super().__init__()
        if kind not in LINEAR_KINDS:
            raise ValueError(f"unknown linear-attention kind {kind!r}; allowed: {', '.join(LINEAR_KINDS)}")
        self.kind, self.ctx = kind, ctx
        h, d = cfg.heads, cfg.head_dim
        self.heads, self.head_dim = h, d
        per_channel = kind in ("kda", "gdn2")
        self.decay_width = d if per_channel else 1
        self.q = nn.Linear(cfg.dim, h * d, bias=False)
        self.k = nn.Linear(cfg.dim, h * d, bias=False)
        self.v = nn.Linear(cfg.dim, h * d, bias=False)
        self.a = nn.Linear(cfg.dim, h * self.decay_width, bias=False)
        self.a_log = nn.Parameter(torch.log(torch.empty(h, self.decay_width).uniform_(1, 16)))
        self.dt_bias = nn.Parameter(torch.zeros(h, self.decay_width))
        # Gated DeltaNet-2 has an erase gate per key channel and a write gate per value channel.
        self.b = nn.Linear(cfg.dim, h * (2 * d if kind == "gdn2" else 1), bias=False)
        self.gate = nn.Linear(cfg.dim, h * d, bias=False)
        self.o_norm = nn.RMSNorm(d, eps=cfg.norm_eps)
        self.out = nn.Linear(h * d, cfg.dim, bias=False)

    def forward(self, x: torch.Tensor, positions: torch.Tensor, segments: torch.Tensor | None = None) -> torch.Tensor:
        b, t, _ = x.shape
        h, d = self.heads, self.head_dim
        q = F.normalize(self.q(x).view(b, t, h, d), dim=-1)
        k = self.k(x).view(b, t, h, d)
        if self.kind != "kla":
            k = F.normalize(k, dim=-1)
        v = self.v(x).view(b, t, h, d)
        g = -self.a_log.exp() * F.softplus(self.a(x).view(b, t, h, self.decay_width) + self.dt_bias)
        gates = torch.sigmoid(self.b(x).view(b, t, h, -1))
        o, _ = self._mix(q, k, v, g, gates, segments)
        o = self.o_norm(o) * F.silu(self.gate(x).view(b, t, h, d))
        return self.out(o.reshape(b, t, h * d))

    def _mix(self, q, k, v, g, gates, segments):
        sharded = self.ctx.degree > 1
        kw = {"chunk_size": CHUNK} | ({"group": self.ctx.group} if sharded else {})
        if segments is not None:  # without, the kernels' calls stay as they were
            kw["segments"] = segments
        if self.kind == "gdn2":
            erase, write = gates.split(self.head_dim, dim=-1)
            fn = kl.lasp2_gdn2 if sharded else kl.chunk_gdn2
            return fn(q, k, v, g, erase, write, **kw)
        step = gates.squeeze(-1)
        if self.kind == "kla":
            step = kl.kla_beta(k, step)
        if self.kind == "kda":
            return (kl.lasp2_kda if sharded else kl.chunk_kda)(q, k, v, g, step, **kw)
        return (kl.lasp2_gated_delta_rule if sharded else kl.chunk_gated_delta_rule)(q, k, v, g.squeeze(-1), step, **kw)
