"""DeepSpeed-Ulysses attention: all-to-all from sequence shards to head shards and back.

Each rank starts with ``n = N/P`` positions of every head. One all-to-all per tensor gives
it the *full* sequence for ``1/P`` of the heads, where attention is a single local block
(:func:`.blocks.block_forward`), and one all-to-all returns the output (and its LSE) to
sequence shards. The backward is the same pattern with the roles swapped: ``q, k, v, out,
lse`` and ``dout`` go to head shards again, the block backward runs there, and ``dq, dk,
dv`` come back. Re-gathering instead of saving the forward's head-sharded copies keeps
four tensors of ``q``'s size from living between forward and backward, for twice the
backward traffic. The work runs in passes of ``P`` K/V heads by default (:mod:`.passes`),
so the head-sharded tensors of one pass are ``P/Hkv`` of their one-pass size.

Requires ``Hq % P == 0`` and ``Hkv % P == 0`` (query head ``h`` then meets its key/value
head ``h // (Hq/Hkv)`` on the same rank). Contiguous layout.

Per-rank bytes sent (equal to bytes received), ``e`` the element size, ``l = 4 B Hq n
(P-1)/P`` the fp32 LSE:

- forward: ``2 (Hq + Hkv) B n D e (P-1)/P + l``;
- backward: ``4 (Hq + Hkv) B n D e (P-1)/P + l``.

Both are below their value at ``(P-1)/P = 1`` for every ``P``: constant when ``N`` and
``P`` grow together. With ``segments`` (packed documents, :mod:`.documents`) the forward
adds one all-gather of the int64 ids, ``8 (P-1) B n``; each head shard then attends the
full sequence under the ``[B, 1, N, N]`` document mask, built once per forward and once
per backward.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from .. import comm
from .blocks import block_backward, block_forward, check_inputs
from .documents import check_segments, gather_ids, kernel_mask
from .passes import by_head_groups, head_groups

__all__ = ["ulysses_attention"]


def ulysses_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    group: dist.ProcessGroup | None = None,
    causal: bool = False,
    scale: float | None = None,
    kv_heads_per_pass: int | None = None,
    segments: torch.Tensor | None = None,
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
        kv_heads_per_pass: K/V heads per pass (:mod:`.passes`); a multiple of the group
            size, default the group size (the fewest a pass can hold: each rank then
            attends ``1`` K/V head of the full sequence per pass). ``Hkv`` is one pass.
        segments: int64 ``[B, n]``, the document id of each of this rank's tokens, for
            packed sequences: a query attends only keys of its own document
            (:mod:`.documents`; the full sequence's ids are all-gathered once per call).
            ``None``: one document per sample.

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
    per_pass = size if kv_heads_per_pass is None else kv_heads_per_pass
    groups = head_groups("ulysses_attention", q.shape[1], k.shape[1], per_pass)
    if per_pass % size:
        raise ValueError(f"ulysses_attention: kv_heads_per_pass must be a multiple of the "
                         f"group size ({size}), got {per_pass}")
    check_segments("ulysses_attention", segments, q)
    ids = None
    if segments is not None:  # every head shard holds the full sequence: gather its ids
        ids = gather_ids("ulysses_attention", segments, group, "contiguous")
        ids = ids.transpose(0, 1).reshape(ids.shape[1], -1)  # contiguous: ranks in order
    return _UlyssesAttention.apply(q, k, v, group, causal, scale, groups, ids)


def _mask(ids, dtype):
    """Pairs of one document ``[B, 1, N, N]`` in the full sequence (causality is applied on
    top), built per call (forward and backward) rather than kept alive between them;
    ``None`` without ids or with one document per sample."""
    return None if ids is None else kernel_mask(ids, ids, dtype)


class _UlyssesAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, group, causal, scale, groups, ids):
        out = torch.empty_like(q, memory_format=torch.contiguous_format)
        lse = q.new_empty(q.shape[:-1], dtype=torch.float32)
        mask = _mask(ids, q.dtype)
        by_head_groups(lambda *t: _forward(*t, group, causal, scale, mask), [q, k, v],
                       [out, lse], groups)
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.args = (group, causal, scale)
        ctx.ids = ids
        ctx.groups = groups
        return out

    @staticmethod
    def backward(ctx, dout):
        q, k, v, out, lse = ctx.saved_tensors
        grads = [torch.empty_like(t, memory_format=torch.contiguous_format) for t in (q, k, v)]
        mask = _mask(ctx.ids, q.dtype)
        by_head_groups(lambda *t: _backward(*t, *ctx.args, mask), [dout, q, k, v, out, lse],
                       grads, ctx.groups)
        return *grads, None, None, None, None, None


def _forward(q, k, v, group, causal, scale, mask):
    """One pass: head shards of the full sequence, one local block, back to sequence
    shards; the LSE goes back too, so that the backward can rebuild the head shards."""
    out, lse = block_forward(*(_to_heads(t, group) for t in (q, k, v)),
                             causal=causal, scale=scale, mask=mask)
    return _to_sequence(out, group), _to_sequence(lse.unsqueeze(-1), group).squeeze(-1)


def _backward(dout, q, k, v, out, lse, group, causal, scale, mask):
    """One pass: the inputs go to head shards again (instead of keeping the forward's
    head-sharded copies alive between forward and backward), then the block backward."""
    heads = [_to_heads(t, group) for t in (dout, q, k, v, out)]
    heads.append(_to_heads(lse.unsqueeze(-1), group).squeeze(-1))
    grads = block_backward(*heads, causal=causal, scale=scale, mask=mask)
    del heads
    return [_to_sequence(g, group) for g in grads]


def _to_heads(x: torch.Tensor, group) -> torch.Tensor:
    """``[B, H, n, D]`` sequence shard -> ``[B, H/P, P n, D]`` head shard (all-to-all)."""
    size = comm.world_size(group)
    if size == 1:
        return x
    b, h, n, d = x.shape
    send = x.reshape(b, size, h // size, n, d).transpose(0, 1).contiguous()
    recv = comm.all_to_all_single(torch.empty_like(send), send, group=group)
    # recv[i] is rank i's positions of this rank's heads: put them in sequence order.
    return recv.permute(1, 2, 0, 3, 4).reshape(b, h // size, size * n, d)


def _to_sequence(x: torch.Tensor, group) -> torch.Tensor:
    """``[B, H/P, P n, D]`` head shard -> ``[B, H, n, D]`` sequence shard (all-to-all)."""
    size = comm.world_size(group)
    if size == 1:
        return x
    b, hp, total, d = x.shape
    send = x.reshape(b, hp, size, total // size, d).permute(2, 0, 1, 3, 4).contiguous()
    recv = comm.all_to_all_single(torch.empty_like(send), send, group=group)
    # recv[i] holds head group i of this rank's positions.
    return recv.transpose(0, 1).reshape(b, hp * size, total // size, d)
