"""Token-by-token reference of the gated delta rule (Gated DeltaNet)."""

from __future__ import annotations

import torch

from .._recurrent import recurrent_delta
from .._variants import gdn_terms


def recurrent_gated_delta_rule(
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
    """Gated DeltaNet, one token at a time:
    ``S_t = exp(g_t) (I - beta_t k_t k_t^T) S_{t-1} + beta_t k_t v_t^T``, ``o_t = S_t^T (scale q_t)``.

    Args:
        q, k: ``[B, T, H, K]`` (k usually L2-normalised); v: ``[B, T, H, V]``.
        g: ``[B, T, H]`` log decay (<= 0), ``alpha_t = exp(g_t)``.
        beta: ``[B, T, H]`` delta-rule step (``[0, 2]`` keeps the transition's eigenvalues in ``[-1, 1]``).
        scale: query scale, ``K ** -0.5`` when None.
        initial_state: ``[B, H, K, V]`` or None (zeros).
        output_final_state: return the final state ``[B, H, K, V]`` (float32) too.
        segments: ``[B, T]`` int64 document ids of a packed sequence (a document is a run of
            equal ids) or None (one document): the state restarts from zero at each
            document's first token (``initial_state`` feeds the first document only).

    Returns:
        ``(o [B, T, H, V] in q's dtype, final_state or None)``.

    Example::

        >>> import torch, torch.nn.functional as F
        >>> from shardwright.kernels.linear import recurrent_gated_delta_rule
        >>> B, T, H, K, V = 1, 10, 2, 8, 4
        >>> q, k = torch.randn(B, T, H, K), F.normalize(torch.randn(B, T, H, K), dim=-1)
        >>> g, beta = F.logsigmoid(torch.randn(B, T, H)), torch.rand(B, T, H)
        >>> o, _ = recurrent_gated_delta_rule(q, k, torch.randn(B, T, H, V), g, beta)
        >>> o.shape
        torch.Size([1, 10, 2, 4])
    """
    terms, scale = gdn_terms(q, k, v, g, beta, initial_state, scale, segments=segments)
    return recurrent_delta(
        *terms, scale=scale, initial_state=initial_state, output_final_state=output_final_state,
        segments=segments,
    )
