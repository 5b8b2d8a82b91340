"""Chunked Kimi Delta Attention (KDA)."""

from __future__ import annotations

import torch

from .._chunk import chunk_delta
from .._variants import kda_terms


def chunk_kda(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    beta: torch.Tensor,
    *,
    scale: float | None = None,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
    chunk_size: int = 64,
    segments: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """KDA in chunks of ``chunk_size`` tokens (WY form, one triangular solve per chunk).

    Same arguments and results as :func:`~shardwright.kernels.linear.recurrent_kda`, plus
    ``chunk_size`` (<= 16 or a multiple of 16). ``T`` need not be a multiple of it.

    Example::

        >>> import torch, torch.nn.functional as F
        >>> from shardwright.kernels.linear import chunk_kda
        >>> B, T, H, K, V = 1, 100, 2, 16, 8
        >>> q, k = torch.randn(B, T, H, K), F.normalize(torch.randn(B, T, H, K), dim=-1)
        >>> g = F.logsigmoid(torch.randn(B, T, H, K))
        >>> o, _ = chunk_kda(q, k, torch.randn(B, T, H, V), g, torch.rand(B, T, H), chunk_size=32)
        >>> o.shape
        torch.Size([1, 100, 2, 8])
    """
    terms, scale = kda_terms(q, k, v, g, beta, initial_state, scale, chunk_size, segments)
    return chunk_delta(
        *terms, scale=scale, initial_state=initial_state,
        output_final_state=output_final_state, chunk_size=chunk_size, segments=segments,
    )
