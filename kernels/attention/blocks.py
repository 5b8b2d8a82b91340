"""Per-device attention on one (query block, key/value block) pair, forward and backward.

Every sequence-parallel kernel reduces to calls of :func:`block_forward` (returns the
block's output and its log-sum-exp) and :func:`block_backward` (takes the *final* global
output and LSE of those query rows, so that each block's gradient is exact). Both pick
torch's own fused kernel by device in one place, :func:`_ops_for`:

- CPU: ``aten._scaled_dot_product_flash_attention_for_cpu`` and its backward;
- CUDA, fp16/bf16: ``aten._scaled_dot_product_flash_attention`` and its backward;
- CUDA, fp32: ``aten._scaled_dot_product_efficient_attention`` and its backward.

A ``mask`` of allowed pairs (packed documents, :mod:`.documents`) reaches the kernels as
an additive bias (0 or ``-inf``); on CUDA the memory-efficient kernel then runs for every
dtype, since flash takes none. Nothing here re-implements attention. Grouped-query
attention (more query heads than key/value heads) expands K/V to the query heads for the
call and sums the gradient of each group back onto its K/V head, so communication always
moves the smaller K/V.

Shapes follow ``scaled_dot_product_attention``: ``q [B, Hq, Lq, D]``, ``k, v [B, Hkv, Lk,
D]`` with ``Hq % Hkv == 0``; ``lse [B, Hq, Lq]`` in fp32. ``causal=True`` is only used on
square blocks (a shard against itself), where top-left and bottom-right alignment agree.
The CPU kernels read row and head slices in place (they take any strides with a unit-stride
last dim), so callers pass views and no block is copied; the CUDA ones get contiguous
copies.
"""

from __future__ import annotations

import math
from typing import Callable, NamedTuple

import torch
import torch.nn.functional as F

__all__ = ["BlockMask", "block_forward", "block_backward", "check_inputs"]

aten = torch.ops.aten


def check_inputs(
    name: str, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float | None
) -> float:
    """Validate the local shards passed to a public kernel; return the softmax scale."""
    for label, t in (("q", q), ("k", k), ("v", v)):
        if t.dim() != 4:
            raise ValueError(f"{name}: {label} must be [batch, heads, local_seq, head_dim], "
                             f"got shape {tuple(t.shape)}")
    if k.shape != v.shape:
        raise ValueError(f"{name}: k and v must have the same shape, got {tuple(k.shape)} "
                         f"and {tuple(v.shape)}")
    b, hq, n, d = q.shape
    if (k.shape[0], k.shape[2], k.shape[3]) != (b, n, d):
        raise ValueError(f"{name}: k/v must match q in batch, local_seq and head_dim, got "
                         f"q {tuple(q.shape)} and k {tuple(k.shape)}")
    if hq % k.shape[1]:
        raise ValueError(f"{name}: q heads ({hq}) must be a multiple of k/v heads "
                         f"({k.shape[1]})")
    if len({q.dtype, k.dtype, v.dtype}) != 1 or len({q.device, k.device, v.device}) != 1:
        raise ValueError(f"{name}: q, k, v must share dtype and device")
    return 1.0 / math.sqrt(d) if scale is None else float(scale)


class _Ops(NamedTuple):
    forward: Callable[..., tuple[torch.Tensor, torch.Tensor]]
    backward: Callable[..., tuple[torch.Tensor, torch.Tensor, torch.Tensor]]


def _contiguous(*tensors: torch.Tensor) -> list[torch.Tensor]:
    return [t.contiguous() for t in tensors]


def _cpu_forward(q, k, v, causal, scale, bias=None):
    return aten._scaled_dot_product_flash_attention_for_cpu(q, k, v, 0.0, causal,
                                                            attn_mask=bias, scale=scale)


def _cpu_backward(dout, q, k, v, out, lse, causal, scale, bias=None):
    return aten._scaled_dot_product_flash_attention_for_cpu_backward(
        dout, q, k, v, out, lse, 0.0, causal, attn_mask=bias, scale=scale
    )


def _flash_forward(q, k, v, causal, scale):
    q, k, v = _contiguous(q, k, v)
    out, lse, *_ = aten._scaled_dot_product_flash_attention(q, k, v, 0.0, causal, scale=scale)
    return out, lse


def _flash_backward(dout, q, k, v, out, lse, causal, scale):
    # Dense (not varlen) inputs: no cumulative lengths; dropout 0 never reads the seed.
    dout, q, k, v, out, lse = _contiguous(dout, q, k, v, out, lse)
    seed = offset = torch.empty((), dtype=torch.long, device=q.device)
    return aten._scaled_dot_product_flash_attention_backward(
        dout, q, k, v, out, lse, None, None, q.shape[2], k.shape[2], 0.0, causal,
        seed, offset, scale=scale,
    )


def _efficient_bias(bias, q):
    """The bias as the kernel reads it: expanded to every head, rows 16-aligned (as SDPA)."""
    if bias is None:
        return None
    lk = bias.shape[-1]
    bias = F.pad(bias, (0, -lk % 16))[..., :lk]
    return bias.expand(q.shape[0], q.shape[1], q.shape[2], lk)


def _efficient_forward(q, k, v, causal, scale, bias=None):
    q, k, v = _contiguous(q, k, v)
    out, lse, *_ = aten._scaled_dot_product_efficient_attention(
        q, k, v, _efficient_bias(bias, q), True, 0.0, causal, scale=scale
    )
    return out, lse[..., : q.shape[2]]  # the kernel pads the LSE rows to a multiple of 32


def _efficient_backward(dout, q, k, v, out, lse, causal, scale, bias=None):
    padded = -(-q.shape[2] // 32) * 32
    lse = F.pad(lse, (0, padded - q.shape[2])).contiguous()
    dout, q, k, v, out = _contiguous(dout, q, k, v, out)
    seed = offset = torch.empty((), dtype=torch.long, device=q.device)
    dq, dk, dv, _ = aten._scaled_dot_product_efficient_attention_backward(
        dout, q, k, v, _efficient_bias(bias, q), out, lse, seed, offset, 0.0,
        (True, True, True, False), causal, scale=scale,
    )
    return dq, dk, dv


def _ops_for(q: torch.Tensor, masked: bool = False) -> _Ops:
    """The fused SDPA kernel pair torch provides for ``q``'s device and dtype (and a mask:
    the CUDA flash kernel takes none, the efficient one takes an additive bias)."""
    if q.device.type == "cpu":
        return _Ops(_cpu_forward, _cpu_backward)
    if q.device.type == "cuda":
        if q.dtype in (torch.float16, torch.bfloat16) and not masked:
            return _Ops(_flash_forward, _flash_backward)
        return _Ops(_efficient_forward, _efficient_backward)
    raise NotImplementedError(f"no block attention kernel for device {q.device.type!r}")


def _expand_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    groups = heads // x.shape[1]
    return x if groups == 1 else x.repeat_interleave(groups, dim=1)


def _reduce_heads(grad: torch.Tensor, heads: int) -> torch.Tensor:
    b, hq, n, d = grad.shape
    return grad if hq == heads else grad.view(b, heads, hq // heads, n, d).sum(2)


class BlockMask(NamedTuple):
    """A block's allowed pairs as the fused kernels take them; built once, used by every
    head pass of a call."""

    bias: torch.Tensor  # [B, 1, Lq, Lk] in q's dtype: 0 allowed, -inf not
    empty: torch.Tensor | None  # [B, 1, Lq] rows without any allowed key; None: no such row

    @classmethod
    def of(cls, allowed: torch.Tensor, dtype: torch.dtype) -> BlockMask:
        """From boolean ``allowed [B, 1, Lq, Lk]`` (True = may attend)."""
        empty = ~allowed.any(-1)
        return cls(torch.where(allowed, 0.0, float("-inf")).to(dtype),
                   empty if bool(empty.any()) else None)


def block_forward(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    causal: bool,
    scale: float,
    mask: BlockMask | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Attend ``q [B, Hq, Lq, D]`` to ``k, v [B, Hkv, Lk, D]``.

    ``mask`` restricts the pairs further, on top of ``causal`` (which the kernels still
    use to skip tiles). Rows it leaves without any key get ``out = 0`` and ``lse = -inf``,
    which the LSE merge treats as "no keys" (the kernels alone would give ``lse = 0`` or
    NaN); with ``causal`` (a square block of one shard) the caller guarantees each row
    keeps its own position.

    Returns ``(out [B, Hq, Lq, D]`` in q's dtype, ``lse [B, Hq, Lq]`` fp32).

    Example:
        >>> q = torch.randn(1, 4, 8, 16); kv = torch.randn(1, 2, 8, 16)
        >>> out, lse = block_forward(q, kv, kv, causal=True, scale=0.25)
        >>> out.shape, lse.shape
        (torch.Size([1, 4, 8, 16]), torch.Size([1, 4, 8]))
    """
    heads = q.shape[1]
    k, v = _expand_heads(k, heads), _expand_heads(v, heads)
    if mask is None:
        out, lse = _ops_for(q).forward(q, k, v, causal, scale)
        return out, lse.float()
    out, lse = _ops_for(q, masked=True).forward(q, k, v, causal, scale, mask.bias)
    lse = lse.float()
    if mask.empty is not None:  # broadcast over heads
        out = out.masked_fill(mask.empty.unsqueeze(-1), 0.0)
        lse = lse.masked_fill(mask.empty, float("-inf"))
    return out, lse


def block_backward(
    dout: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    out: torch.Tensor,
    lse: torch.Tensor,
    *,
    causal: bool,
    scale: float,
    mask: BlockMask | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients of one block given the final global ``out`` and ``lse`` of its query rows.

    ``dout`` and ``out`` are ``[B, Hq, Lq, D]`` (``out`` is cast to q's dtype), ``lse`` is
    ``[B, Hq, Lq]``; ``mask`` as in :func:`block_forward`. The global ``lse`` is finite
    (every query sees itself), so masked pairs get probability ``exp(-inf) = 0`` and rows
    without a key in this block get zero gradients. Returns ``(dq [B, Hq, Lq, D], dk, dv
    [B, Hkv, Lk, D])`` in q's dtype.
    """
    heads, kv_heads = q.shape[1], k.shape[1]
    k, v = _expand_heads(k, heads), _expand_heads(v, heads)
    extra = () if mask is None else (mask.bias,)
    dq, dk, dv = _ops_for(q, masked=mask is not None).backward(
        dout.to(q.dtype), q, k, v, out.to(q.dtype), lse.float(), causal, scale, *extra,
    )
    return dq, _reduce_heads(dk, kv_heads), _reduce_heads(dv, kv_heads)
