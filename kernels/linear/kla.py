"""Kaczmarz Linear Attention (KLA): Gated DeltaNet with the normalised step
``beta_t = eta_t / (||k_t||^2 + eps)``.

With that step the delta update is one Kaczmarz projection: ``eta = 1`` makes the new state
reproduce ``v_t`` exactly along ``k_t`` whatever the key's norm. It equals GDN run on
``k / ||k||, v / ||k||`` with ``beta' = eta ||k||^2 / (||k||^2 + eps)``; on keys that are
already L2-normalised ``beta = eta / (1 + eps)`` and KLA is GDN with ``beta = eta`` up to a
relative ``eps`` (docs/kernels-linear.md records the measured difference).
"""

from __future__ import annotations

import torch

from ._variants import kla_beta
from .gated_delta_rule import chunk_gated_delta_rule, recurrent_gated_delta_rule

__all__ = ["kla_beta", "chunk_kla", "recurrent_kla"]


def recurrent_kla(
    q, k, v, g, eta, *, eps: float = 1e-6, scale=None, initial_state=None, output_final_state=False,
    segments=None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Token-by-token KLA; ``eta: [B, T, H]``, other arguments and results as
    :func:`~shardwright.kernels.linear.recurrent_gated_delta_rule`."""
    return recurrent_gated_delta_rule(
        q, k, v, g, kla_beta(k, eta, eps),
        scale=scale, initial_state=initial_state, output_final_state=output_final_state, segments=segments,
    )


def chunk_kla(
    q, k, v, g, eta, *, eps: float = 1e-6, scale=None, initial_state=None, output_final_state=False,
    chunk_size: int = 64, segments=None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Chunked KLA; ``eta: [B, T, H]``, other arguments (``scale``, ``initial_state``,
    ``output_final_state``, ``chunk_size``, ``segments``) and results as
    :func:`~shardwright.kernels.linear.chunk_gated_delta_rule`.

    Example::

        >>> import torch, torch.nn.functional as F
        >>> from shardwright.kernels.linear import chunk_kla
        >>> B, T, H, K, V = 1, 100, 2, 16, 8
        >>> q, k = torch.randn(B, T, H, K), torch.randn(B, T, H, K)
        >>> g, eta = F.logsigmoid(torch.randn(B, T, H)), torch.rand(B, T, H)
        >>> o, _ = chunk_kla(q, k, torch.randn(B, T, H, V), g, eta)
        >>> o.shape
        torch.Size([1, 100, 2, 8])
    """
    return chunk_gated_delta_rule(
        q, k, v, g, kla_beta(k, eta, eps), scale=scale, initial_state=initial_state,
        output_final_state=output_final_state, chunk_size=chunk_size, segments=segments,
    )
