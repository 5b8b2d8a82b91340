"""Ring attention: queries stay, key/value shards travel around the ring of ranks.

Forward, on each of ``P`` steps a rank posts the transfer of the K/V shard it holds to the
next rank (and receives the previous rank's) *before* attending its queries to that shard,
then merges the partial result by LSE (:mod:`.merge`) and waits. Backward runs the same
ring: K/V travel again, and the gradient of each K/V shard travels with it in fp32,
collecting every rank's contribution until it arrives home. Each block's backward uses the
final global ``out`` and ``lse``, so gradients are exact; nothing goes through autograd.
The ring runs once per group of K/V heads (:mod:`.passes`, one K/V head by default), so
the blocks in flight, their receive buffers and the travelling gradients are ``1/Hkv`` of
what one pass over all heads would hold.

Per-rank bytes sent (equal to bytes received), ``n = N/P`` local positions, ``e`` the
element size, ``B`` batch, ``Hkv`` key/value heads, ``D`` head dim:

- forward: ``2 (P-1) n D Hkv B e`` (K and V, ``P-1`` hops);
- backward: ``2 (P-1) n D Hkv B (e + 4)`` (K and V again, and their fp32 gradients).

With ``segments`` (packed documents, :mod:`.documents`) the forward adds one all-gather
of the int64 ids, ``8 (P-1) B n``, kept for the backward; blocks without an allowed pair
are not computed, but K/V still travel on (later ranks need them).
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from .. import comm
from .blocks import block_backward, block_forward, check_inputs
from .documents import DocumentBlocks, check_segments, gather_ids
from .layout import check_layout
from .merge import merge_
from .p2p import send_recv
from .passes import by_head_groups, head_groups

__all__ = ["ring_attention"]


def ring_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    group: dist.ProcessGroup | None = None,
    causal: bool = False,
    layout: str = "zigzag",
    scale: float | None = None,
    kv_heads_per_pass: int = 1,
    segments: torch.Tensor | None = None,
) -> torch.Tensor:
    """Softmax attention over a sequence sharded across ``group`` with a K/V ring.

    Args:
        q: ``[B, Hq, n, D]``, this rank's query shard in ``layout`` (see
            :func:`shard_sequence`).
        k, v: ``[B, Hkv, n, D]`` with ``Hq % Hkv == 0`` (grouped-query attention).
        group: process group; ``None`` is the default group. One rank (or no initialised
            group) gives plain ``scaled_dot_product_attention``.
        causal: causal mask over *global* positions.
        layout: ``"zigzag"`` (balanced causal work; ``n`` must be even) or
            ``"contiguous"``.
        scale: softmax scale, default ``1/sqrt(D)``.
        kv_heads_per_pass: the ring runs once per group of this many K/V heads (and their
            query heads), see :mod:`.passes`. 1 (default) keeps the least in flight; ``Hkv``
            is one pass with the fewest, largest messages.
        segments: int64 ``[B, n]``, the document id of each of this rank's tokens (same
            layout as ``q``), for packed sequences: a query attends only keys of its own
            document (:mod:`.documents`). ``None``: one document per sample.

    Returns:
        ``[B, Hq, n, D]``: this rank's shard of the output, same layout.

    Example:
        >>> q, k, v = (torch.randn(2, 4, 16, 8) for _ in range(3))
        >>> out = ring_attention(q, k, v, causal=True)  # one process: plain SDPA
        >>> torch.allclose(out, torch.nn.functional.scaled_dot_product_attention(
        ...     q, k, v, is_causal=True), atol=1e-5)
        True
    """
    scale = check_inputs("ring_attention", q, k, v, scale)
    if q.shape[2] % check_layout(layout):
        raise ValueError(f"ring_attention: zigzag shards hold two equal chunks, so the local "
                         f"sequence length must be even, got {q.shape[2]}")
    groups = head_groups("ring_attention", q.shape[1], k.shape[1], kv_heads_per_pass)
    check_segments("ring_attention", segments, q)
    ids = None if segments is None else gather_ids("ring_attention", segments, group, layout)
    return _RingAttention.apply(q, k, v, group, causal, layout, scale, groups, ids)


class _RingAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, group, causal, layout, scale, groups, ids):
        out = torch.empty_like(q, memory_format=torch.contiguous_format)
        lse = q.new_empty(q.shape[:-1], dtype=torch.float32)
        blocks = DocumentBlocks(layout, causal, q.shape[2], ids, q.dtype, crop=True)
        by_head_groups(lambda *t: _forward(*t, group, scale, blocks), [q, k, v], [out, lse],
                       groups)
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.args = (group, causal, layout, scale, ids)
        ctx.groups = groups
        return out

    @staticmethod
    def backward(ctx, dout):
        q, k, v, out, lse = ctx.saved_tensors
        grads = [torch.empty_like(t, memory_format=torch.contiguous_format) for t in (q, k, v)]
        group, causal, layout, scale, ids = ctx.args
        blocks = DocumentBlocks(layout, causal, q.shape[2], ids, q.dtype, crop=True)
        by_head_groups(lambda *t: _backward(*t, group, scale, blocks),
                       [dout, q, k, v, out, lse], grads, ctx.groups)
        return *grads, None, None, None, None, None, None


def _neighbours(group) -> tuple[int, int, int, int]:
    size, me = comm.world_size(group), comm.rank(group)
    return size, me, (me + 1) % size, (me - 1) % size


def _forward(q, k, v, group, scale, blocks):
    size, me, nxt, prv = _neighbours(group)
    out = lse = None
    kv = [k, v]
    for step in range(size):
        if step < size - 1:
            ops, next_kv = send_recv(kv, nxt, kv, prv)
            pending = comm.exchange(ops, group)
        found = blocks(me, (me - step) % size)
        if found is not None:
            blk, mask = found
            part = block_forward(q[:, :, blk.q], kv[0][:, :, blk.kv], kv[1][:, :, blk.kv],
                                 causal=blk.causal, scale=scale, mask=mask)
            if out is None:  # step 0, the own (always whole) block: it is the accumulator
                out, lse = part[0].float(), part[1]
            else:
                merge_(out[:, :, blk.q], lse[:, :, blk.q], *part)
        if step < size - 1:
            pending.wait()
            kv = next_kv
    return out, lse


def _backward(dout, q, k, v, out, lse, group, scale, blocks):
    """dq stays here; each K/V shard's (dk, dv) rides the ring one step behind it.

    The gradient of shard ``s`` is started by rank ``s+1`` (rank ``s`` keeps its own part)
    and arrives back at ``s`` after ``P-1`` hops, each overlapping the next step's compute.
    """
    size, me, nxt, prv = _neighbours(group)
    dq = own_dkv = None
    kv, arriving_dkv, dkv_pending = [k, v], None, None
    for step in range(size):
        if step < size - 1:
            ops, next_kv = send_recv(kv, nxt, kv, prv)
            kv_pending = comm.exchange(ops, group)
        found = blocks(me, (me - step) % size)
        grads = None
        if found is not None:
            blk, mask = found
            rows = (slice(None), slice(None), blk.q)
            gq, *grads = block_backward(
                dout[rows], q[rows], kv[0][:, :, blk.kv], kv[1][:, :, blk.kv], out[rows],
                lse[rows], causal=blk.causal, scale=scale, mask=mask,
            )
        if step == 0:  # the own (always whole) block: its gradients are the accumulators
            dq, own_dkv = gq.float(), [g.float() for g in grads]
        else:
            if dkv_pending is None:  # step 1 starts the travelling gradient of shard me-1
                dkv = [torch.zeros(t.shape, dtype=t.dtype, device=t.device) for t in own_dkv]
            else:  # accumulate into the buffer that just arrived: no extra copies
                dkv_pending.wait()
                dkv = arriving_dkv
            if grads is not None:
                dq[rows] += gq
                for acc, grad in zip(dkv, grads):
                    acc[:, :, blk.kv] += grad
            ops, arriving_dkv = send_recv(dkv, nxt, dkv, prv)
            dkv_pending = comm.exchange(ops, group)
        if step < size - 1:
            kv_pending.wait()
            kv = next_kv
    if dkv_pending is not None:
        dkv_pending.wait()
        for mine, theirs in zip(own_dkv, arriving_dkv):
            mine += theirs
    return dq, *own_dkv
