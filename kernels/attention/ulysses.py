"""DeepSpeed-Ulysses attention: all-to-all from sequence shards to head shards and back.

Each rank starts with ``n = N/P`` positions of every head. One all-to-all per tensor gives
it the *full* sequence for ``1/P`` of the heads, where attention is a single local block
(:func:`.blocks.block_forward`), and one all-to-all returns the output to sequence shards.
The backward is the same pattern with the roles swapped: ``dout`` goes to head shards, the
block backward runs on the saved head-sharded tensors, and ``dq, dk, dv`` come back.

Requires ``Hq % P == 0`` and ``Hkv % P == 0`` (query head ``h`` then meets its key/value
head ``h // (Hq/Hkv)`` on the same rank). Contiguous layout.

Per-rank bytes sent (equal to bytes received), ``e`` the element size:
forward and backward each ``2 (Hq + Hkv) B n D e (P-1)/P``, which is below
``2 (Hq + Hkv) B n D e`` for every ``P``: constant when ``N`` and ``P`` grow together.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from .. import comm
from .blocks import block_backward, block_forward, check_inputs

__all__ = ["ulysses_attention"]


def ulysses_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    group: dist.ProcessGroup | None = None,
    causal: bool = False,
    scale: float | None = None,
) -> torch.Tensor:
    """Softmax attention over a sequence sharded contiguously across ``group``.

    Args:
        q: ``[B, Hq, n, D]``, this rank's contiguous query shard
            (``shard_sequence(x, layout="contiguous")``).
        k, v: ``[B, Hkv, n, D]``; ``Hq`` and ``Hkv`` must both be divisible by the group
            size, and ``Hq % Hkv == 0``.
        group: process group; ``None`` is the default group.
        causal: causal mask over global positions.
        scale: softmax scale, default ``1/sqrt(D)``.

    Returns:
        ``[B, Hq, n, D]``: this rank's shard of the output.

    Example:
        >>> q, k, v = (torch.randn(1, 2, 8, 4) for _ in range(3))
        >>> ulysses_attention(q, k, v, causal=True).shape  # one process: plain SDPA
        torch.Size([1, 2, 8, 4])
    """
    scale = check_inputs("ulysses_attention", q, k, v, scale)
    size = comm.world_size(group)
    if q.shape[1] % size or k.shape[1] % size:
        raise ValueError(f"ulysses_attention: q heads ({q.shape[1]}) and k/v heads "
                         f"({k.shape[1]}) must both be divisible by the group size ({size})")
    return _UlyssesAttention.apply(q, k, v, group, causal, scale)


class _UlyssesAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, group, causal, scale):
        qh, kh, vh = (_to_heads(t, group) for t in (q, k, v))
        out, lse = block_forward(qh, kh, vh, causal=causal, scale=scale)
        ctx.save_for_backward(qh, kh, vh, out, lse)
        ctx.args = (group, causal, scale)
        return _to_sequence(out, group)

    @staticmethod
    def backward(ctx, dout):
        qh, kh, vh, out, lse = ctx.saved_tensors
        group, causal, scale = ctx.args
        grads = block_backward(_to_heads(dout, group), qh, kh, vh, out, lse,
                               causal=causal, scale=scale)
        return *(_to_sequence(g, group) for g in grads), None, None, None


def _to_heads(x: torch.Tensor, group) -> torch.Tensor:
    """``[B, H, n, D]`` sequence shard -> ``[B, H/P, P n, D]`` head shard (all-to-all)."""
    size = comm.world_size(group)
    b, h, n, d = x.shape
    send = x.reshape(b, size, h // size, n, d).transpose(0, 1).contiguous()
    recv = comm.all_to_all_single(torch.empty_like(send), send, group=group)
    # recv[i] is rank i's positions of this rank's heads: put them in sequence order.
    return recv.permute(1, 2, 0, 3, 4).reshape(b, h // size, size * n, d)


def _to_sequence(x: torch.Tensor, group) -> torch.Tensor:
    """``[B, H/P, P n, D]`` head shard -> ``[B, H, n, D]`` sequence shard (all-to-all)."""
    size = comm.world_size(group)
    b, hp, total, d = x.shape
    send = x.reshape(b, hp, size, total // size, d).permute(2, 0, 1, 3, 4).contiguous()
    recv = comm.all_to_all_single(torch.empty_like(send), send, group=group)
    # recv[i] holds head group i of this rank's positions.
    return recv.transpose(0, 1).reshape(b, hp * size, total // size, d)
