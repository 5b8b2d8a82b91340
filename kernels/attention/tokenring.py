"""TokenRing attention: queries travel the ring one way, partial results go home directly.

K/V stay on their rank. On step ``i`` rank ``r`` holds the query shard of rank ``r-i``,
attends it to its own K/V and, during the *next* step's compute, sends the partial
``(out, lse)`` straight back to rank ``r-i`` over the full mesh, while the queries move on
to ``r+1``. Both directions of the links carry data and every transfer is posted before
the compute it overlaps. The owner merges partials by LSE (:mod:`.merge`).

The backward has the same shape (:func:`_token_ring` runs both): ``(q, dout, out, lse)``
travel, each rank adds the block's ``dk, dv`` to its own K/V gradient and sends the
partial ``dq`` home. Blocks that causal masking empties (:func:`.schedule.block`) are
neither computed nor sent. Contiguous layout. Like the ring, it runs once per group of
K/V heads (:mod:`.passes`, one K/V head and its query heads by default).

Per-rank bytes sent, ``n = N/P``, ``e`` the element size, ``Hq`` query heads, and ``m``
the number of non-empty partials this rank computes for other ranks (``P-1``; causal:
``P-1-r`` on rank ``r``):

- forward: ``(P-1) B Hq n D e`` (queries) ``+ m B Hq n (D e + 4)`` (partial out, fp32 lse);
- backward: ``(P-1) B Hq n (3 D e + 4)`` (q, dout, out, lse) ``+ m B Hq n D e`` (dq).

With ``segments`` (packed documents, :mod:`.documents`) the forward adds one all-gather
of the int64 ids, ``8 (P-1) B n``, and ``m`` counts only the blocks holding a pair of one
document: the others are neither computed nor sent home (queries still travel on).
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.distributed as dist

from .. import comm
from . import schedule
from .blocks import BlockMask, block_backward, block_forward, check_inputs
from .documents import DocumentBlocks, check_segments, gather_ids
from .merge import merge_
from .p2p import send_recv
from .passes import by_head_groups, head_groups

__all__ = ["tokenring_attention"]

Tensors = list[torch.Tensor]


def tokenring_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    group: dist.ProcessGroup | None = None,
    causal: bool = False,
    scale: float | None = None,
    kv_heads_per_pass: int = 1,
    segments: torch.Tensor | None = None,
) -> torch.Tensor:
    """Softmax attention over a sequence sharded contiguously, moving queries not K/V.

    Args:
        q: ``[B, Hq, n, D]``, this rank's contiguous query shard
            (``shard_sequence(x, layout="contiguous")``).
        k, v: ``[B, Hkv, n, D]`` with ``Hq % Hkv == 0``.
        group: process group; ``None`` is the default group.
        causal: causal mask over global positions.
        scale: softmax scale, default ``1/sqrt(D)``.
        kv_heads_per_pass: the ring runs once per group of this many K/V heads (and their
            query heads), see :mod:`.passes`. 1 (default) keeps the least in flight; ``Hkv``
            is one pass with the fewest, largest messages.
        segments: int64 ``[B, n]``, the document id of each of this rank's tokens, for
            packed sequences: a query attends only keys of its own document
            (:mod:`.documents`); blocks without an allowed pair are neither computed nor
            sent home. ``None``: one document per sample.

    Returns:
        ``[B, Hq, n, D]``: this rank's shard of the output.

    Example:
        >>> q, k, v = (torch.randn(1, 2, 8, 4) for _ in range(3))
        >>> tokenring_attention(q, k, v).shape  # one process: plain SDPA
        torch.Size([1, 2, 8, 4])
    """
    scale = check_inputs("tokenring_attention", q, k, v, scale)
    groups = head_groups("tokenring_attention", q.shape[1], k.shape[1], kv_heads_per_pass)
    check_segments("tokenring_attention", segments, q)
    ids = None if segments is None else \
        gather_ids("tokenring_attention", segments, group, "contiguous")
    return _TokenRingAttention.apply(q, k, v, group, causal, scale, groups, ids)


class _TokenRingAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, group, causal, scale, groups, ids):
        out = torch.empty_like(q, memory_format=torch.contiguous_format)
        lse = q.new_empty(q.shape[:-1], dtype=torch.float32)
        blocks = DocumentBlocks("contiguous", causal, q.shape[2], ids, q.dtype)
        by_head_groups(lambda *t: _forward(*t, group, scale, blocks), [q, k, v], [out, lse],
                       groups)
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.args = (group, causal, scale, ids)
        ctx.groups = groups
        return out

    @staticmethod
    def backward(ctx, dout):
        q, k, v, out, lse = ctx.saved_tensors
        grads = [torch.empty_like(t, memory_format=torch.contiguous_format) for t in (q, k, v)]
        group, causal, scale, ids = ctx.args
        blocks = DocumentBlocks("contiguous", causal, q.shape[2], ids, q.dtype)
        by_head_groups(lambda *t: _backward(*t, group, scale, blocks),
                       [dout, q, k, v, out, lse], grads, ctx.groups)
        return *grads, None, None, None, None, None


def _forward(q, k, v, group, scale, blocks) -> Tensors:
    out = torch.zeros(q.shape, dtype=torch.float32, device=q.device)
    lse = torch.full(q.shape[:-1], float("-inf"), dtype=torch.float32, device=q.device)

    def visit(blk, mask, travelling):
        return list(block_forward(travelling[0], k, v, causal=blk.causal, scale=scale,
                                  mask=mask))

    def collect(partial):
        merge_(out, lse, *partial)

    _token_ring([q], visit, [q, lse], collect, group, blocks)  # partial out is q-shaped
    return [out, lse]


def _backward(dout, q, k, v, out, lse, group, scale, blocks) -> Tensors:
    dq = torch.zeros(q.shape, dtype=torch.float32, device=q.device)
    dkv = [torch.zeros(t.shape, dtype=torch.float32, device=t.device) for t in (k, v)]

    def visit(blk, mask, travelling):
        tq, tdout, tout, tlse = travelling
        gq, gk, gv = block_backward(tdout, tq, k, v, tout, tlse, causal=blk.causal, scale=scale,
                                    mask=mask)
        dkv[0].add_(gk)
        dkv[1].add_(gv)
        return [gq]

    def collect(partial):
        dq.add_(partial[0])

    _token_ring([q, dout, out, lse], visit, [q], collect, group, blocks)
    return [dq, *dkv]


def _token_ring(
    travelling: Tensors,
    visit: Callable[[schedule.Block, BlockMask | None, Tensors], Tensors],
    partial_like: Tensors,
    collect: Callable[[Tensors], None],
    group,
    blocks: DocumentBlocks,
) -> None:
    """Send ``travelling`` (this rank's tensors) past every rank; ``visit`` computes a
    partial result from each visitor and the local K/V; each partial is returned to its
    owner, which passes it to ``collect``. ``partial_like`` gives the partials' shapes.

    Step ``i`` posts: the visitor onward (``r -> r+1``), the partial computed at step
    ``i-1`` home to ``r-i+1``, and the receipt of this rank's partial from ``r+i-1``; then
    computes the partial of step ``i``; then waits.
    """
    size, me = comm.world_size(group), comm.rank(group)
    outgoing: Tensors | None = None
    for step in range(size + 1):  # step ``size`` only returns the last partial
        ops, arriving, incoming = [], None, None
        if step < size - 1:
            ops, arriving = send_recv(travelling, (me + 1) % size, travelling, (me - 1) % size)
        if step >= 2:
            home, helper = (me - step + 1) % size, (me + step - 1) % size
            sends = outgoing or []
            expected = not blocks.empty(me, helper)
            more, incoming = send_recv(sends, home, partial_like if expected else [], helper)
            ops += more
        pending = comm.exchange(ops, group)
        outgoing = None
        if step < size:
            owner = (me - step) % size
            found = blocks(owner, me)
            partial = visit(*found, travelling) if found is not None else None
            if step == 0:
                collect(partial)
            else:
                outgoing = partial
        pending.wait()
        if incoming:
            collect(incoming)
        if arriving is not None:
            travelling = arriving
