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
    (None elsewhere). Every rank must backpropagate through its ``o`` (the backward
    all-reduces state gradients), e.g. with a loss over all tokens.
"""


def lasp2_gated_delta_rule(
    q, k, v, g, beta, *, group: dist.ProcessGroup | None = None, scale=None, initial_state=None,
    output_final_state: bool = False, chunk_size: int = 64,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    terms, scale = gdn_terms(q, k, v, g, beta, initial_state, scale, chunk_size)
    return _lasp2(terms, scale, initial_state, output_final_state, chunk_size, group)


def lasp2_kda(
    q, k, v, g, beta, *, group: dist.ProcessGroup | None = None, scale=None, initial_state=None,
    output_final_state: bool = False, chunk_size: int = 64,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    terms, scale = kda_terms(q, k, v, g, beta, initial_state, scale, chunk_size)
    return _lasp2(terms, scale, initial_state, output_final_state, chunk_size, group)


def lasp2_gdn2(
    q, k, v, g, erase, write, *, group: dist.ProcessGroup | None = None, scale=None,
    initial_state=None, output_final_state: bool = False, chunk_size: int = 64,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    terms, scale = gdn2_terms(q, k, v, g, erase, write, initial_state, scale, chunk_size)
    return _lasp2(terms, scale, initial_state, output_final_state, chunk_size, group)


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


def _lasp2(terms, scale, initial_state, output_final_state, chunk_size, group):
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
        output_final_state=True, chunk_size=chunk_size,
    )
    o_local, q_eff = o_aug.split([V, K], -1)
    s_in = _IncomingState.apply(state_aug, group)  # fp32 (fp64 for fp64 inputs)
    o = (o_local + torch.einsum("bthk,bhkv->bthv", q_eff, s_in)).to(out_dtype)
    final = None
    if output_final_state and me == size - 1:
        ext, m = state_aug.split([V, K], -1)
        final = ext + m @ s_in
    return o, final


def _fold(stacked: torch.Tensor, upto: int) -> torch.Tensor:
    """``fold_{j<upto} (S -> M_j S + E_j)`` from zero; ``stacked: [P, B, H, K, V + K] = [E | M]``."""
    V = stacked.shape[-1] - stacked.shape[-2]
    s = stacked.new_zeros(stacked.shape[1:-1] + (V,))
    for j in range(upto):
        ext, m = stacked[j].split([V, stacked.shape[-2]], -1)
        s = m @ s + ext
    return s


class _IncomingState(torch.autograd.Function):
    """All-gather every rank's ``[E | M]`` and fold the prefix; backward sums slot gradients."""

    @staticmethod
    def forward(ctx, state_aug: torch.Tensor, group) -> torch.Tensor:
        stacked = comm.all_gather(state_aug.contiguous(), group)
        ctx.group = group
        ctx.save_for_backward(stacked)
        return _fold(stacked, comm.rank(group))

    @staticmethod
    def backward(ctx, grad_s_in: torch.Tensor):
        (stacked,) = ctx.saved_tensors
        me = comm.rank(ctx.group)
        grad = torch.zeros_like(stacked)
        if me > 0:  # rank 0's incoming state is zero: no slot receives gradient from it
            with torch.enable_grad():
                x = stacked.detach().requires_grad_()
                (grad,) = torch.autograd.grad(_fold(x, me), x, grad_s_in)
        comm.all_reduce(grad, group=ctx.group)
        return grad[me], None
