"""Map each variant's arguments onto the one recurrence of :mod:`._recurrent`.

The core needs ``(q, k, ê, v̂, g)`` with ``g: [B, T, H, K]`` per channel, or
``[B, T, H, 1]`` for one decay on all channels; these helpers
check a variant's arguments and build those five tensors, so the recurrent, chunked and
sequence-parallel entry points of a variant share one definition.
"""

from __future__ import annotations

import torch

from ._checks import (
    check_chunk_size, check_qkv, check_segments, check_shape, check_state, compute_dtype, resolve_scale,
)

Terms = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


def kda_terms(q, k, v, g, beta, initial_state, scale, chunk_size=None, segments=None) -> tuple[Terms, float]:
    """KDA: ``ê = beta k``, ``v̂ = beta v``; ``g, beta: [B, T, H, K], [B, T, H]``."""
    B, T, H, K, _ = check_qkv(q, k, v)
    check_shape("g", g, (B, T, H, K), "[B, T, H, K]")
    return _beta_terms(q, k, v, g, beta, initial_state, scale, chunk_size, segments)


def gdn_terms(q, k, v, g, beta, initial_state, scale, chunk_size=None, segments=None) -> tuple[Terms, float]:
    """GDN: KDA with the scalar decay ``g: [B, T, H]`` on every key channel (passed to the
    cores as ``[B, T, H, 1]``, which they broadcast over the channels)."""
    B, T, H, _, _ = check_qkv(q, k, v)
    check_shape("g", g, (B, T, H), "[B, T, H]")
    return _beta_terms(q, k, v, g.unsqueeze(-1), beta, initial_state, scale, chunk_size, segments)


def _beta_terms(q, k, v, g, beta, initial_state, scale, chunk_size, segments) -> tuple[Terms, float]:
    B, T, H, K = q.shape
    check_shape("beta", beta, (B, T, H), "[B, T, H]")
    _check_common(q, initial_state, chunk_size, segments, v.shape[-1])
    b, k, v = _up(q, beta.unsqueeze(-1), k, v)
    return (q, k, b * k, b * v, g), resolve_scale(scale, K)


def gdn2_terms(
    q, k, v, g, erase, write, initial_state, scale, chunk_size=None, segments=None
) -> tuple[Terms, float]:
    """Gated DeltaNet-2: ``ê = erase ⊙ k``, ``v̂ = write ⊙ v``."""
    B, T, H, K, V = check_qkv(q, k, v)
    check_shape("g", g, (B, T, H, K), "[B, T, H, K]")
    check_shape("erase", erase, (B, T, H, K), "[B, T, H, K]")
    check_shape("write", write, (B, T, H, V), "[B, T, H, V]")
    _check_common(q, initial_state, chunk_size, segments, V)
    erase, write, k, v = _up(q, erase, write, k, v)
    return (q, k, erase * k, write * v, g), resolve_scale(scale, K)


def kla_beta(k: torch.Tensor, eta: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Kaczmarz step ``beta = eta / (||k||^2 + eps)``; ``k: [B, T, H, K]``, ``eta: [B, T, H]``.

    Example::

        >>> k, eta = torch.randn(1, 8, 2, 16), torch.rand(1, 8, 2)
        >>> kla_beta(k, eta).shape
        torch.Size([1, 8, 2])
    """
    if not isinstance(k, torch.Tensor) or k.dim() != 4:
        raise ValueError("k must be a 4-d tensor [B, T, H, K]")
    check_shape("eta", eta, k.shape[:3], "[B, T, H]")
    if eps < 0:
        raise ValueError(f"eps must be >= 0, got {eps}")
    return eta / (k.pow(2).sum(-1) + eps)


def _up(q: torch.Tensor, *xs: torch.Tensor) -> list[torch.Tensor]:
    """Cast to the compute dtype before gating, so bf16 inputs are not rounded twice
    (q keeps its dtype: the cores read the output dtype from it)."""
    return [x.to(compute_dtype(q)) for x in xs]


def _check_common(q, initial_state, chunk_size, segments, V) -> None:
    B, _, H, K = q.shape
    check_state(initial_state, B, H, K, V)
    check_segments(segments, q)
    if chunk_size is not None:
        check_chunk_size(chunk_size)
