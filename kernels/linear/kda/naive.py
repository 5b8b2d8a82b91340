"""Token-by-token reference of Kimi Delta Attention (KDA)."""

from __future__ import annotations

import torch

from .._recurrent import recurrent_delta
from .._variants import kda_terms


def recurrent_kda(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    beta: torch.Tensor,
    *,
    scale: float | None = None,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
    segments: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """KDA, one token at a time: ``S_t = (I - beta_t k_t k_t^T) Diag(exp(g_t)) S_{t-1} + beta_t k_t v_t^T``,
    ``o_t = S_t^T (scale q_t)``. The decay acts first, per key channel (as in
    flash-linear-attention's ``naive_recurrent_kda``).

    Args:
        q, k: ``[B, T, H, K]``; v: ``[B, T, H, V]``.
        g: ``[B, T, H, K]`` log decay per key channel (<= 0).
        beta: ``[B, T, H]`` delta-rule step.
        scale, initial_state, output_final_state, segments: as in ``recurrent_gated_delta_rule``.

    Returns:
        ``(o [B, T, H, V] in q's dtype, final_state or None)``.

    Example::

        >>> import torch, torch.nn.functional as F
        >>> from shardwright.kernels.linear import recurrent_kda
        >>> B, T, H, K, V = 1, 10, 2, 8, 4
        >>> q, k = torch.randn(B, T, H, K), F.normalize(torch.randn(B, T, H, K), dim=-1)
        >>> g = F.logsigmoid(torch.randn(B, T, H, K))
        >>> o, s = recurrent_kda(q, k, torch.randn(B, T, H, V), g, torch.rand(B, T, H),
        ...                      output_final_state=True)
        >>> o.shape, s.shape
        (torch.Size([1, 10, 2, 4]), torch.Size([1, 2, 8, 4]))
    """
    terms, scale = kda_terms(q, k, v, g, beta, initial_state, scale, segments=segments)
    return recurrent_delta(
        *terms, scale=scale, initial_state=initial_state, output_final_state=output_final_state,
        segments=segments,
    )
