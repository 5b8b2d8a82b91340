"""Chunked (WY / UT) form of the generalised gated delta rule of :mod:`._recurrent`.

Per chunk of C tokens with incoming state S (RESEARCH.md §2, decay per key channel):

1. G_r = sum_{j<=r} g_j inside the chunk                    ([C, K], per channel)
2. A[r, i] = sum_c ê_rc k_ic exp(G_rc - G_ic) for i < r      (strictly lower)
3. (I + A) [U | W] = [v̂ | ê ⊙ exp(G)]                       one unit-lower triangular solve
4. V_new = U - W S                                           what each token writes
5. O = (q ⊙ exp(G)) S + tril(Aqk) V_new,  Aqk[r, i] = sum_c q_rc k_ic exp(G_rc - G_ic)
6. S <- Diag(exp(G_C)) S + (k ⊙ exp(G_C - G))^T V_new

``g`` is ``[..., K]`` (a decay per key channel, KDA) or ``[..., 1]`` (the same decay on
every channel, GDN: broadcasting does the rest, and the decay factor of steps 2 and 5 is
one ``[C, C]`` matrix instead of ``[C, C, K]``).
Steps 1-3 and 5's matrices do not depend on S and run for all chunks at once; only
steps 4-6 walk the chunks in order.

Decay factors exp(G_r - G_i) are never split into exp(G_r) exp(-G_i) across a whole chunk
(exp(-G_i) overflows float32 once a channel decays by e^-88 inside the chunk). Between
sub-blocks of ``SUB_BLOCK`` tokens they are split at the boundary, exp(G_r - G_ref)
exp(G_ref - G_i) with both factors <= 1; within a sub-block they are split at its first
token while that stays below e^``SPLIT_LIMIT``, and formed pairwise otherwise.

Documents (``segments``, packed sequences) are exact masks on the same quantities
(:func:`document_masks`): A and Aqk keep only pairs inside one document; the incoming S
reaches (steps 3 and 5) only the tokens of the chunk's first document, and only when that
document continues from the previous chunk; step 6 builds the outgoing state from the
chunk's last document alone and drops ``exp(G_C) S`` when a document starts in the chunk.
G stays the chunk's cumulative sum: only differences inside one document are used.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ._checks import SUB_BLOCK, compute_dtype

#: Largest |G_r - G_0| inside a sub-block for which exp(G_r - G_i) is formed as
#: exp(G_r - G_0) exp(G_0 - G_i) (a matmul); e^40 leaves float32 a margin of e^48 for the
#: operands. Beyond it (decay below e^-40 within 16 tokens) the factor is formed pairwise.
SPLIT_LIMIT = 40.0


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
    segments: torch.Tensor | None = None,
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

    chunks = [to_chunks(x) for x in (q * scale, k, k_erase, v_write, g)]
    S0 = q.new_zeros(B, H, K, V, dtype=dtype) if initial_state is None else initial_state.to(dtype)
    docs = None if segments is None else document_masks(segments, N, C, dtype)
    o, S = _ChunkedDelta.apply(*chunks, S0, docs)
    o = o.flatten(2, 3)[:, :, :T].transpose(1, 2).to(out_dtype)
    return o, (S if output_final_state else None)


class _ChunkedDelta(torch.autograd.Function):
    """Chunk-recomputing backward: the forward keeps only its inputs and the N + 1 chunk
    boundary states ``[B, H, K, V]``; the backward walks the chunks in reverse, rebuilds one
    chunk's graph from its saved incoming state and differentiates it (exact, since it is
    the same computation), so backward memory is one chunk's graph, not the sequence's.
    """

    @staticmethod
    def forward(ctx, q, k, k_erase, v_write, g, S0, docs):  # [B, H, N, C, D] each, S0 [B, H, K, V]
        parts = _intra_chunk(q, k, k_erase, v_write, g, docs)
        states, outputs = [S0], []
        for n in range(q.shape[2]):
            o_n, S = _across_chunk([p[:, :, n] for p in parts], states[-1])
            outputs.append(o_n)
            states.append(S)
        ctx.save_for_backward(q, k, k_erase, v_write, g, torch.stack(states, 2))
        ctx.docs = docs
        return torch.stack(outputs, 2), states[-1]

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, d_o, d_S):  # unused outputs arrive as zeros (materialised grads)
        *inputs, states = ctx.saved_tensors
        grads = [torch.zeros_like(x) for x in inputs]
        for n in reversed(range(states.shape[2] - 1)):
            with torch.enable_grad():
                xs = [x[:, :, n].detach().requires_grad_() for x in inputs]
                S = states[:, :, n].detach().requires_grad_()
                docs = None if ctx.docs is None else [m[:, :, n] for m in ctx.docs]
                o_n, S_next = _across_chunk(_intra_chunk(*xs, docs), S)
                *dxs, d_S = torch.autograd.grad((o_n, S_next), [*xs, S], (d_o[:, :, n], d_S))
            for grad, dx in zip(grads, dxs):
                grad[:, :, n] = dx
        return (*grads, d_S, None)


def document_masks(segments: torch.Tensor, N: int, C: int, dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
    """Masks of the chunks' documents from ``segments [B, T]``: ``(same [B, 1, N, C, C],
    first [B, 1, N, C, 1], last [B, 1, N, C, 1], carry [B, 1, N, 1, 1])`` in ``dtype``.

    ``same``: both tokens in one document; ``first``: the token gets the incoming state (its
    document is the chunk's first and continues from the previous chunk, or the chunk is the
    sequence's first); ``last``: the token is in the chunk's last document; ``carry``: the
    whole chunk is one continuing document. A document is a maximal run of equal ids; the
    padding of the last chunk joins its last document (it writes nothing).
    """
    B, T = segments.shape
    seg = torch.cat([segments, segments[:, -1:].expand(B, N * C - T)], 1)
    runs = F.pad((seg[:, 1:] != seg[:, :-1]).cumsum(1), (1, 0)).view(B, 1, N, C)
    first_id, last_id = runs[..., 0], runs[..., -1]
    cont = F.pad(first_id[..., 1:] == last_id[..., :-1], (1, 0), value=True)  # [B, 1, N]
    same = runs.unsqueeze(-1) == runs.unsqueeze(-2)
    first = cont.unsqueeze(-1) & (runs == first_id.unsqueeze(-1))
    last = runs == last_id.unsqueeze(-1)
    carry = cont & (first_id == last_id)
    return same.to(dtype), first.to(dtype)[..., None], last.to(dtype)[..., None], carry.to(dtype)[..., None, None]


def _intra_chunk(q, k, k_erase, v_write, g, docs=None) -> tuple[torch.Tensor, ...]:
    """Steps 1-3 and the state-independent factors of 5-6, for chunks ``[..., C, D]``;
    ``docs``: :func:`document_masks` of these chunks, or None (one document)."""
    V, K = v_write.shape[-1], k.shape[-1]
    same, first, last, carry = (None,) * 4 if docs is None else docs
    G = g.cumsum(-2)
    A = _masked(decayed_gram(k_erase, k, G, strict=True), same)
    eye = torch.eye(G.shape[-2], dtype=G.dtype, device=G.device)
    UW = torch.linalg.solve_triangular(
        eye + A, torch.cat([v_write, _masked(k_erase * G.exp(), first)], -1), upper=False, unitriangular=True
    )
    U, W = UW.split([V, K], -1)
    G_last = G[..., -1:, :]
    return (
        U, W, _masked(decayed_gram(q, k, G, strict=False), same), _masked(q * G.exp(), first),
        _masked(k * (G_last - G).exp(), last), _masked(G_last.transpose(-1, -2).exp(), carry),
    )


def _masked(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    return x if mask is None else x * mask


def _across_chunk(parts, S: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Steps 4-6 for one chunk: its output ``[..., C, V]`` and the state leaving it."""
    U, W, Aqk, q_decayed, k_to_end, state_decay = parts
    v_new = U - W @ S
    o = q_decayed @ S + Aqk @ v_new
    return o, state_decay * S + k_to_end.transpose(-1, -2) @ v_new


def decayed_gram(left: torch.Tensor, right: torch.Tensor, G: torch.Tensor, *, strict: bool) -> torch.Tensor:
    """``M[..., r, i] = sum_c left[r, c] right[i, c] exp(G[r, c] - G[i, c])`` for ``i < r``
    (``i <= r`` unless ``strict``), zero above; ``left, right: [..., C, K]``, ``G: [..., C, K]``
    or ``[..., C, 1]`` (one decay for every channel); result ``[..., C, C]``.
    """
    C = G.shape[-2]
    ninf = float("-inf")
    if G.shape[-1] == 1:  # one decay for all channels (GDN): a [C, C] factor suffices
        keep = torch.ones(C, C, dtype=torch.bool, device=G.device).tril(-1 if strict else 0)
        decay = (G - G.transpose(-1, -2)).masked_fill(~keep, ninf).exp()
        return (left @ right.transpose(-1, -2)) * decay
    s = min(C, SUB_BLOCK)
    nb = C // s
    L, R, Gb = (x.unflatten(-2, (nb, s)) for x in (left, right, G))  # [..., nb, s, K]
    keep = torch.ones(s, s, dtype=torch.bool, device=G.device).tril(-1 if strict else 0)
    G_first = Gb[..., :1, :]
    if (Gb - G_first).abs().amax() <= SPLIT_LIMIT:
        # Diagonal sub-blocks split at their first token: exp(G_0 - G_i) <= e^SPLIT_LIMIT.
        L_s, R_s = L * (Gb - G_first).exp(), R * (G_first - Gb).exp()
        blocks = (L_s @ R_s.transpose(-1, -2)).masked_fill(~keep, 0.0)  # [..., nb, s, s]
    else:
        # Decay too strong to split: pairwise, diff[..., r, i, c] = G_r - G_i, masked before
        # exp so that neither overflow nor its gradient (0 * inf) can appear.
        diff = (Gb.unsqueeze(-2) - Gb.unsqueeze(-3)).masked_fill(~keep[..., None], ninf)
        blocks = torch.einsum("...ric,...ic->...ri", L.unsqueeze(-2) * diff.exp(), R)
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
