"""Token-by-token reference of Gated DeltaNet-2 (decoupled erase and write gates).

Definition used throughout (Hatamizadeh, Choi, Kautz, "Gated DeltaNet-2: Decoupling Erase
and Write in Linear Attention", 2026), with ``D_t = Diag(exp(g_t))``::

    S_t = (I - k_t (b_t ⊙ k_t)^T) D_t S_{t-1} + k_t (w_t ⊙ v_t)^T ,   o_t = S_t^T (scale q_t)

- ``b_t in (0, 1)^K`` is the *erase* gate, on the key side: the decayed state is read
  with ``b_t ⊙ k_t`` and that read is removed along ``k_t``;
- ``w_t in (0, 1)^V`` is the *write* gate, on the value side: which value channels of
  ``v_t`` are committed.

With ``b_t = beta_t 1`` and ``w_t = beta_t 1`` this is KDA; if moreover every channel of
``g_t`` is equal it is Gated DeltaNet.
"""

from __future__ import annotations

import torch

from .._recurrent import recurrent_delta
from .._variants import gdn2_terms


def recurrent_gdn2(
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
    segments: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Gated DeltaNet-2, one token at a time (recurrence in the module docstring).

    Args:
        q, k: ``[B, T, H, K]``; v: ``[B, T, H, V]``.
        g: ``[B, T, H, K]`` log decay per key channel (<= 0).
        erase: ``[B, T, H, K]`` erase gate ``b`` (key side).
        write: ``[B, T, H, V]`` write gate ``w`` (value side).
        scale, initial_state, output_final_state, segments: as in ``recurrent_gated_delta_rule``.

    Returns:
        ``(o [B, T, H, V] in q's dtype, final_state [B, H, K, V] or None)``.

    Example::

        >>> import torch, torch.nn.functional as F
        >>> from shardwright.kernels.linear import recurrent_gdn2
        >>> B, T, H, K, V = 1, 10, 2, 8, 4
        >>> q, k = torch.randn(B, T, H, K), F.normalize(torch.randn(B, T, H, K), dim=-1)
        >>> g = F.logsigmoid(torch.randn(B, T, H, K))
        >>> o, _ = recurrent_gdn2(q, k, torch.randn(B, T, H, V), g,
        ...                       torch.rand(B, T, H, K), torch.rand(B, T, H, V))
        >>> o.shape
        torch.Size([1, 10, 2, 4])
    """
    terms, scale = gdn2_terms(q, k, v, g, erase, write, initial_state, scale, segments=segments)
    return recurrent_delta(
        *terms, scale=scale, initial_state=initial_state, output_final_state=output_final_state,
        segments=segments,
    )
