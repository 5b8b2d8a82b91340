"""Argument checks shared by the public linear-attention functions.

Every public function validates its inputs here once, so a wrong shape fails with the
argument's name and the expected layout instead of deep inside a matmul.
"""

from __future__ import annotations

import torch

#: Chunk sizes above this must be a multiple of it: the chunked core tiles each chunk into
#: sub-blocks of this many tokens to keep its decay factors in range.
SUB_BLOCK = 16


def compute_dtype(x: torch.Tensor) -> torch.dtype:
    """float64 stays float64 (reference checks); everything else runs in float32."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def check_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[int, int, int, int, int]:
    """Check ``q, k: [B, T, H, K]`` and ``v: [B, T, H, V]``; return ``(B, T, H, K, V)``."""
    for name, x in (("q", q), ("k", k), ("v", v)):
        if not isinstance(x, torch.Tensor) or x.dim() != 4:
            raise ValueError(f"{name} must be a 4-d tensor [B, T, H, D], got {_describe(x)}")
        if not x.is_floating_point():
            raise TypeError(f"{name} must be floating point, got {x.dtype}")
    if q.shape != k.shape:
        raise ValueError(f"q and k must have the same shape [B, T, H, K]: {tuple(q.shape)} vs {tuple(k.shape)}")
    if v.shape[:3] != q.shape[:3]:
        raise ValueError(f"v must be [B, T, H, V] with B, T, H of q {tuple(q.shape[:3])}, got {tuple(v.shape)}")
    if len({q.dtype, k.dtype, v.dtype}) != 1 or len({q.device, k.device, v.device}) != 1:
        raise TypeError("q, k and v must share one dtype and one device")
    if q.shape[1] == 0:
        raise ValueError("the sequence is empty (T = 0)")
    B, T, H, K = q.shape
    return B, T, H, K, v.shape[-1]


def check_shape(name: str, x: torch.Tensor, shape: tuple[int, ...], layout: str) -> None:
    """Check that ``x`` is a floating tensor of exactly ``shape`` (described as ``layout``)."""
    if not isinstance(x, torch.Tensor) or tuple(x.shape) != tuple(shape):
        raise ValueError(f"{name} must be {layout} = {tuple(shape)}, got {_describe(x)}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be floating point, got {x.dtype}")


def check_state(initial_state: torch.Tensor | None, B: int, H: int, K: int, V: int) -> None:
    if initial_state is not None:
        check_shape("initial_state", initial_state, (B, H, K, V), "[B, H, K, V]")


def check_segments(segments: torch.Tensor | None, q: torch.Tensor) -> None:
    """``segments``: int64 ``[B, T]`` document ids of the tokens, on ``q``'s device."""
    if segments is None:
        return
    B, T = q.shape[:2]
    rule = f"segments must be an int64 tensor [B, T] = {(B, T)} of document ids on {q.device}"
    if not isinstance(segments, torch.Tensor) or tuple(segments.shape) != (B, T):
        raise ValueError(f"{rule}, got {_describe(segments)}")
    if segments.dtype != torch.int64 or segments.device != q.device:
        raise ValueError(f"{rule}, got {segments.dtype} on {segments.device}")


def check_chunk_size(chunk_size: int) -> None:
    if not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")
    if chunk_size > SUB_BLOCK and chunk_size % SUB_BLOCK:
        raise ValueError(f"chunk_size above {SUB_BLOCK} must be a multiple of {SUB_BLOCK}, got {chunk_size}")


def resolve_scale(scale: float | None, K: int) -> float:
    return K**-0.5 if scale is None else float(scale)


def _describe(x: object) -> str:
    return f"shape {tuple(x.shape)}" if isinstance(x, torch.Tensor) else type(x).__name__
