"""Token-by-token reference of the generalised gated delta rule (readable, slow).

Every variant in this package (GDN, KDA, KLA, Gated DeltaNet-2) is one recurrence,

    S'_t = Diag(exp(g_t)) S_{t-1}                       decay, per key channel
    u_t  = v̂_t - S'_t^T ê_t                             what to write: new value minus read
    S_t  = S'_t + k_t u_t^T
    o_t  = S_t^T (scale q_t)

i.e. ``S_t = (I - k_t ê_t^T) Diag(exp(g_t)) S_{t-1} + k_t v̂_t^T``, with an *erase key*
``ê_t`` and a *write value* ``v̂_t``: KDA uses ``ê = beta k, v̂ = beta v``; Gated
DeltaNet-2 uses ``ê = b ⊙ k, v̂ = w ⊙ v``; GDN is KDA with ``g`` equal on every channel.
The public wrappers build ``ê, v̂`` and call :func:`recurrent_delta`.

With ``segments`` (document ids of a packed sequence) the state is set to zero before the
first token of every document but the sequence's first: no information crosses a document.
"""

from __future__ import annotations

import torch

from ._checks import compute_dtype


def recurrent_delta(
    q: torch.Tensor,
    k: torch.Tensor,
    k_erase: torch.Tensor,
    v_write: torch.Tensor,
    g: torch.Tensor,
    *,
    scale: float,
    initial_state: torch.Tensor | None,
    output_final_state: bool,
    segments: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Run the recurrence above; ``q, k, k_erase: [B, T, H, K]``, ``v_write: [B, T, H, V]``,
    ``g: [B, T, H, K]`` or ``[B, T, H, 1]`` (one decay for every channel).

    Computes in float32 (float64 for float64 inputs); ``o`` comes back in ``q``'s dtype,
    the final state ``[B, H, K, V]`` in the compute dtype (that of the last document when
    ``segments: [B, T]`` int64 document ids are given).
    """
    dtype, out_dtype = compute_dtype(q), q.dtype
    B, T, H, K = q.shape
    V = v_write.shape[-1]
    q, k, k_erase, v_write, g = (x.to(dtype).transpose(1, 2) for x in (q, k, k_erase, v_write, g))
    q = q * scale
    S = q.new_zeros(B, H, K, V) if initial_state is None else initial_state.to(dtype)
    outputs = []
    for t in range(T):
        if segments is not None and t > 0:  # a new document starts from zero
            S = S * (segments[:, t] == segments[:, t - 1]).to(dtype)[:, None, None, None]
        S = g[:, :, t, :, None].exp() * S
        u = v_write[:, :, t] - torch.einsum("bhk,bhkv->bhv", k_erase[:, :, t], S)
        S = S + k[:, :, t, :, None] * u[:, :, None, :]
        outputs.append(torch.einsum("bhk,bhkv->bhv", q[:, :, t], S))
    o = torch.stack(outputs, dim=1).to(out_dtype)
    return o, (S if output_final_state else None)
