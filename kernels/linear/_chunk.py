"""Chunked (WY / UT) form of the generalised gated delta rule of :mod:`._recurrent`.

Per chunk of C tokens with incoming state S (RESEARCH.md §2, decay per key channel):

1. G_r = sum_{j<=r} g_j inside the chunk                    ([C, K], per channel)
2. A[r, i] = sum_c ê_rc k_ic exp(G_rc - G_ic) for i < r      (strictly lower)
3. (I + A) [U | W] = [v̂ | ê ⊙ exp(G)]                       one unit-lower triangular solve
4. V_new = U - W S                                           what each token writes
5. O = (q ⊙ exp(G)) S + tril(Aqk) V_new,  Aqk[r, i] = sum_c q_rc k_ic exp(G_rc - G_ic)
6. S <- Diag(exp(G_C)) S + (k ⊙ exp(G_C - G))^T V_new

Steps 1-3 and 5's matrices do not depend on S and run for all chunks at once; only
steps 4-6 walk the chunks in order. Scalar decay (GDN) is the case of equal channels.

Decay factors exp(G_r - G_i) are never split into exp(G_r) exp(-G_i) across a whole chunk
(exp(-G_i) overflows float32 once a channel decays by e^-88 inside the chunk). Within
sub-blocks of ``SUB_BLOCK`` tokens they are formed pairwise; between sub-blocks they are
split at the boundary, exp(G_r - G_ref) exp(G_ref - G_i) with both factors <= 1.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ._checks import SUB_BLOCK, compute_dtype


def chunk_delta(
    q: torch.Tensor,
    k: torch.Tensor,
    k_erase: torch.Tensor,
    v_write: torch.Tensor,
    g: torch.Tensor,
    *,
    scale: float,
    initial_state: torch.Tensor | None,
    output_final_state: bool,
    chunk_size: int,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Chunked equivalent of :func:`._recurrent.recurrent_delta` (same arguments and results)."""
    dtype, out_dtype = compute_dtype(q), q.dtype
    B, T, H, K = q.shape
    V = v_write.shape[-1]
    C = chunk_size
    N = math.ceil(T / C)

    def to_chunks(x: torch.Tensor) -> torch.Tensor:
        # [B, T, H, D] -> [B, H, N, C, D]; padding tokens have k = ê = v̂ = g = 0, i.e. an
        # identity transition that writes nothing, so the final state is unaffected.
        x = F.pad(x.to(dtype).transpose(1, 2), (0, 0, 0, N * C - T))
        return x.unflatten(2, (N, C))

    q, k, k_erase, v_write, g = map(to_chunks, (q, k, k_erase, v_write, g))
    q = q * scale
    G = g.cumsum(-2)
    A = decayed_gram(k_erase, k, G, strict=True)
    eye = torch.eye(C, dtype=dtype, device=q.device)
    UW = torch.linalg.solve_triangular(
        eye + A, torch.cat([v_write, k_erase * G.exp()], -1), upper=False, unitriangular=True
    )
    U, W = UW.split([V, K], -1)
    Aqk = decayed_gram(q, k, G, strict=False)
    q_decayed = q * G.exp()
    G_last = G[..., -1:, :]
    k_to_end = k * (G_last - G).exp()
    state_decay = G_last.transpose(-1, -2).exp()  # [B, H, N, K, 1]

    S = q.new_zeros(B, H, K, V) if initial_state is None else initial_state.to(dtype)
    outputs = []
    for n in range(N):
        v_new = U[:, :, n] - W[:, :, n] @ S
        outputs.append(q_decayed[:, :, n] @ S + Aqk[:, :, n] @ v_new)
        S = state_decay[:, :, n] * S + k_to_end[:, :, n].transpose(-1, -2) @ v_new
    o = torch.stack(outputs, 2).flatten(2, 3)[:, :, :T].transpose(1, 2).to(out_dtype)
    return o, (S if output_final_state else None)


def decayed_gram(left: torch.Tensor, right: torch.Tensor, G: torch.Tensor, *, strict: bool) -> torch.Tensor:
    """``M[..., r, i] = sum_c left[r, c] right[i, c] exp(G[r, c] - G[i, c])`` for ``i < r``
    (``i <= r`` unless ``strict``), zero above; inputs ``[..., C, K]``, result ``[..., C, C]``.
    """
    C = G.shape[-2]
    s = min(C, SUB_BLOCK)
    nb = C // s
    L, R, Gb = (x.unflatten(-2, (nb, s)) for x in (left, right, G))  # [..., nb, s, K]
    ninf = float("-inf")
    # Diagonal sub-blocks, pairwise: diff[..., r, i, c] = G_r - G_i, masked before exp so
    # that neither overflow nor its gradient (0 * inf) can appear.
    keep = torch.ones(s, s, dtype=torch.bool, device=G.device).tril(-1 if strict else 0)
    diff = (Gb.unsqueeze(-2) - Gb.unsqueeze(-3)).masked_fill(~keep[..., None], ninf)
    blocks = torch.einsum("...ric,...ic->...ri", L.unsqueeze(-2) * diff.exp(), R)  # [..., nb, s, s]
    if nb == 1:
        return blocks.squeeze(-3)
    # Blocks below the diagonal (row block P > column block Q), split at Q's last token.
    G_ref = Gb[..., -1:, :]  # [..., nb, 1, K]
    R_f = R * (G_ref - Gb).exp()  # [..., Q, s, K]
    below = torch.ones(nb, nb, dtype=torch.bool, device=G.device).tril(-1)
    expo = (Gb.unsqueeze(-3) - G_ref.unsqueeze(-4)).masked_fill(~below[..., None, None], ninf)
    L_f = L.unsqueeze(-3) * expo.exp()  # [..., P, Q, s, K]
    full = L_f @ R_f.unsqueeze(-4).transpose(-1, -2)  # [..., P, Q, s, s]
    eye = torch.eye(nb, dtype=G.dtype, device=G.device)[..., None, None]
    full = full + eye * blocks.unsqueeze(-3)
    return full.transpose(-3, -2).flatten(-4, -3).flatten(-2, -1)
