"""LASP-2 sequence parallelism for the gated delta rule family.

Each rank of ``group`` holds one contiguous shard of the sequence (ranks in sequence
order; shards may differ in length). The state entering rank r's shard is an affine
function of the state leaving rank r-1's, ``S -> M_r S + E_r``, where ``M_r [K, K]`` is the
product of the shard's transitions ``(I - k_t ê_t^T) Diag(exp(g_t))`` and ``E_r [K, V]`` the
state the shard builds from zero. Protocol, per rank:

1. one local chunked pass on the augmented state ``[0 | I]`` with values ``[v̂ | 0]``: its
   final state is ``[E_r | M_r]`` and its output ``[o_r^0 | Q_r]`` with
   ``o_r = o_r^0 + Q_r S_in(r)`` (the output is affine in the incoming state too, so the
   second local pass LASP-2 describes is this one product);
2. ONE all-gather of ``[E_r | M_r]``: ``B H K (K + V)`` fp32 numbers per rank, whatever T;
3. prefix combine in fp32: ``S_in(r) = fold_{j<r} (S -> M_j S + E_j)`` from ``S = 0``.

Backward: rank r's loss depends on the states gathered from ranks j < r, so rank j's state
gradient is the sum over ranks of their gradients for slot j. The autograd Function
:class:`_IncomingState` all-reduces the ``[P, ...]`` gradient of the gathered states and
keeps its own slot: exact (a sum of exact local gradients), one all-reduce of the same
size as the forward gather.

Documents (``segments``): the local pass resets at the shard's own boundaries (so ``M_r = 0``
when a document starts inside the shard) and treats the shard's first document as
continuing. One more all-gather of each rank's first and last document id (``B`` pairs of
int64) says which ranks' first documents really continue from the previous rank's last
token; the fold passes the state into rank r only then, and zero otherwise.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from .. import comm
from ._chunk import chunk_delta
from ._checks import compute_dtype
from ._variants import gdn2_terms, gdn_terms, kda_terms

__all__ = ["lasp2_gated_delta_rule", "lasp2_kda", "lasp2_gdn2"]

_DOC_ARGS = """
    Every rank calls this with its own contiguous shard ``q, k: [B, T_r, H, K]``,
    ``v: [B, T_r, H, V]`` (and gates of the same ``T_r``); ``T_r`` may differ between ranks.
    ``initial_state [B, H, K, V]`` is the state before the whole sequence and is read on
    rank 0 only. The final state of the whole sequence is returned on the last rank
    (None elsewhere). ``segments [B, T_r]`` (int64 document ids of this rank's tokens, or
    None): no state crosses a document, also across ranks; the final state is the last
    document's. Every rank must backpropagate through its ``o`` (the backward
    all-reduces state gradients), e.g. with a loss over all tokens.
"""


def lasp2_gated_delta_rule(
    q, k, v, g, beta, *, group: dist.ProcessGroup | None = None, scale=None, initial_state=None,
    output_final_state: bool = False, chunk_size: int = 64, segments: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    terms, scale = gdn_terms(q, k, v, g, beta, initial_state, scale, chunk_size, segments)
    return _lasp2(terms, scale, initial_state, output_final_state, chunk_size, group, segments)


def lasp2_kda(
    q, k, v, g, beta, *, group: dist.ProcessGroup | None = None, scale=None, initial_state=None,
    output_final_state: bool = False, chunk_size: int = 64, segments: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    terms, scale = kda_terms(q, k, v, g, beta, initial_state, scale, chunk_size, segments)
    return _lasp2(terms, scale, initial_state, output_final_state, chunk_size, group, segments)


def lasp2_gdn2(
    q, k, v, g, erase, write, *, group: dist.ProcessGroup | None = None, scale=None,
    initial_state=None, output_final_state: bool = False, chunk_size: int = 64,
    segments: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    terms, scale = gdn2_terms(q, k, v, g, erase, write, initial_state, scale, chunk_size, segments)
    return _lasp2(terms, scale, initial_state, output_final_state, chunk_size, group, segments)


lasp2_gated_delta_rule.__doc__ = f"""Sequence-parallel ``chunk_gated_delta_rule`` (LASP-2).
{_DOC_ARGS}
    Example (on each rank of an initialised group; here a group of one)::

        >>> import torch, torch.nn.functional as F
        >>> from shardwright.kernels.linear import lasp2_gated_delta_rule
        >>> B, T, H, K, V = 1, 50, 2, 16, 8
        >>> q, k = torch.randn(B, T, H, K), F.normalize(torch.randn(B, T, H, K), dim=-1)
        >>> g, beta = F.logsigmoid(torch.randn(B, T, H)), torch.rand(B, T, H)
        >>> o, _ = lasp2_gated_delta_rule(q, k, torch.randn(B, T, H, V), g, beta)
        >>> o.shape
        torch.Size([1, 50, 2, 8])
"""
lasp2_kda.__doc__ = f"""Sequence-parallel ``chunk_kda`` (LASP-2); ``g: [B, T_r, H, K]``.
{_DOC_ARGS}"""
lasp2_gdn2.__doc__ = f"""Sequence-parallel ``chunk_gdn2`` (LASP-2).
{_DOC_ARGS}"""


def _lasp2(terms, scale, initial_state, output_final_state, chunk_size, group, segments):
    """Steps 1-3 of the module docstring for core terms ``(q, k, ê, v̂, g)`` of this shard."""
    q, k, k_erase, v_write, g = terms
    out_dtype, dtype = q.dtype, compute_dtype(q)
    B, _, H, K = q.shape
    V = v_write.shape[-1]
    me, size = comm.rank(group), comm.world_size(group)
    start = q.new_zeros(B, H, K, V, dtype=dtype)
    if me == 0 and initial_state is not None:
        start = initial_state.to(dtype)
    eye = torch.eye(K, dtype=dtype, device=q.device).expand(B, H, K, K)
    o_aug, state_aug = chunk_delta(
        q.to(dtype), k, k_erase, torch.cat([v_write, v_write.new_zeros(*v_write.shape[:3], K)], -1), g,
        scale=scale, initial_state=torch.cat([start, eye], -1),
        output_final_state=True, chunk_size=chunk_size, segments=segments,
    )
    o_local, q_eff = o_aug.split([V, K], -1)
    joins = None if segments is None else _joins(segments, group, dtype)
    s_in = _IncomingState.apply(state_aug, group, joins)  # fp32 (fp64 for fp64 inputs)
    o = (o_local + torch.einsum("bthk,bhkv->bthv", q_eff, s_in)).to(out_dtype)
    final = None
    if output_final_state and me == size - 1:
        ext, m = state_aug.split([V, K], -1)
        final = ext + m @ s_in
    return o, final


def _joins(segments: torch.Tensor, group, dtype: torch.dtype) -> torch.Tensor:
    """``[P, B, 1, 1, 1]``: 1 where rank j's first document continues rank j-1's last one
    (rank 0: 1), from one all-gather of every rank's first and last ids ``[B, 2]``."""
    ends = comm.all_gather(segments[:, [0, -1]].contiguous(), group)  # [P, B, 2]
    joins = torch.ones(ends.shape[:2], dtype=torch.bool, device=ends.device)
    joins[1:] = ends[1:, :, 0] == ends[:-1, :, 1]
    return joins.to(dtype)[..., None, None, None]


def _fold(stacked: torch.Tensor, upto: int, joins: torch.Tensor | None) -> torch.Tensor:
    """``fold_{j<upto} (S -> M_j S + E_j)`` from zero; ``stacked: [P, B, H, K, V + K] = [E | M]``;
    with ``joins`` (:func:`_joins`) the state enters rank j (and ``upto``) only where it joins."""
    V = stacked.shape[-1] - stacked.shape[-2]
    s = stacked.new_zeros(stacked.shape[1:-1] + (V,))
    for j in range(upto):
        ext, m = stacked[j].split([V, stacked.shape[-2]], -1)
        s = m @ (s if joins is None else s * joins[j]) + ext
    return s if joins is None else s * joins[upto]


class _IncomingState(torch.autograd.Function):
    """All-gather every rank's ``[E | M]`` and fold the prefix; backward sums slot gradients."""

    @staticmethod
    def forward(ctx, state_aug: torch.Tensor, group, joins) -> torch.Tensor:
        stacked = comm.all_gather(state_aug.contiguous(), group)
        ctx.group, ctx.joins = group, joins
        ctx.save_for_backward(stacked)
        return _fold(stacked, comm.rank(group), joins)

    @staticmethod
    def backward(ctx, grad_s_in: torch.Tensor):
        (stacked,) = ctx.saved_tensors
        me = comm.rank(ctx.group)
        grad = torch.zeros_like(stacked)
        if me > 0:  # rank 0's incoming state is zero: no slot receives gradient from it
            with torch.enable_grad():
                x = stacked.detach().requires_grad_()
                (grad,) = torch.autograd.grad(_fold(x, me, ctx.joins), x, grad_s_in)
        comm.all_reduce(grad, group=ctx.group)
        return grad[me], None, None
