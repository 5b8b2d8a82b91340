"""Chunked Gated DeltaNet-2."""

from __future__ import annotations

import torch

from .._chunk import chunk_delta
from .._variants import gdn2_terms


def chunk_gdn2(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    erase: torch.Tensor,
    write: torch.Tensor,
    *,
    scale: float | None = None,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
    chunk_size: int = 64,
    segments: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Gated DeltaNet-2 in chunks of ``chunk_size`` tokens.

    The erase gate enters only the erase key ``b ⊙ k`` (left factor of the WY matrix ``A``
    and of ``W``), the write gate only the written value ``w ⊙ v``; so the chunked core
    of KDA serves unchanged. Same arguments and results as
    :func:`~shardwright.kernels.linear.recurrent_gdn2`, plus ``chunk_size``.

    Example::

        >>> import torch, torch.nn.functional as F
        >>> from shardwright.kernels.linear import chunk_gdn2
        >>> B, T, H, K, V = 1, 100, 2, 16, 8
        >>> q, k = torch.randn(B, T, H, K), F.normalize(torch.randn(B, T, H, K), dim=-1)
        >>> g = F.logsigmoid(torch.randn(B, T, H, K))
        >>> o, _ = chunk_gdn2(q, k, torch.randn(B, T, H, V), g,
        ...                   torch.rand(B, T, H, K), torch.rand(B, T, H, V), chunk_size=32)
        >>> o.shape
        torch.Size([1, 100, 2, 8])
    """
    terms, scale = gdn2_terms(q, k, v, g, erase, write, initial_state, scale, chunk_size, segments)
    return chunk_delta(
        *terms, scale=scale, initial_state=initial_state,
        output_final_state=output_final_state, chunk_size=chunk_size, segments=segments,
    )
