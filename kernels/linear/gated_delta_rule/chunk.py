"""Chunked gated delta rule (Gated DeltaNet)."""

from __future__ import annotations

import torch

from .._chunk import chunk_delta
from .._variants import gdn_terms


def chunk_gated_delta_rule(
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
    """Gated DeltaNet in chunks of ``chunk_size`` tokens (WY/UT form of RESEARCH.md §2).

    Same arguments and results as
    :func:`~shardwright.kernels.linear.recurrent_gated_delta_rule`, plus ``chunk_size``
    (<= 16 or a multiple of 16). ``T`` need not be a multiple of it. Runs the shared
    per-channel core with ``g`` broadcast over the key channels.

    Example::

        >>> import torch, torch.nn.functional as F
        >>> from shardwright.kernels.linear import chunk_gated_delta_rule
        >>> B, T, H, K, V = 1, 100, 2, 16, 8
        >>> q, k = torch.randn(B, T, H, K), F.normalize(torch.randn(B, T, H, K), dim=-1)
        >>> g, beta = F.logsigmoid(torch.randn(B, T, H)), torch.rand(B, T, H)
        >>> o, s = chunk_gated_delta_rule(q, k, torch.randn(B, T, H, V), g, beta,
        ...                               output_final_state=True)
        >>> o.shape, s.shape
        (torch.Size([1, 100, 2, 8]), torch.Size([1, 2, 16, 8]))
    """
    terms, scale = gdn_terms(q, k, v, g, beta, initial_state, scale, chunk_size, segments)
    return chunk_delta(
        *terms, scale=scale, initial_state=initial_state,
        output_final_state=output_final_state, chunk_size=chunk_size, segments=segments,
    )
