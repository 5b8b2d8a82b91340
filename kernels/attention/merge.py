"""Merging two partial softmax-attention results by their log-sum-exp (LSE).

Each block of a sequence-parallel kernel attends a query shard to one key/value shard and
yields a partial ``(out, lse)``. Two partials over disjoint key sets combine exactly into
the result over their union; in the stable fp32 sigmoid form (RESEARCH.md section 1)::

    out = out_a - sigmoid(lse_b - lse_a) * (out_a - out_b)
    lse = max(lse_a, lse_b) - logsigmoid(|lse_a - lse_b|)

The LSE line is ``lse_a - logsigmoid(lse_a - lse_b)`` written symmetrically, so that a row
where only one side is ``-inf`` (no keys seen yet) takes the other side unchanged. Rows
where both sides are ``-inf`` (fully masked so far) keep ``out_a`` and ``lse = -inf``
instead of turning into NaN.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["merge"]


def merge(
    out_a: torch.Tensor, lse_a: torch.Tensor, out_b: torch.Tensor, lse_b: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Combine partial results ``a`` and ``b`` over disjoint key sets, in fp32.

    Args:
        out_a, out_b: ``[..., L, D]`` partial attention outputs (any float dtype).
        lse_a, lse_b: ``[..., L]`` their log-sum-exp of scaled scores; ``-inf`` marks a row
            that has seen no key.

    Returns:
        ``(out, lse)``, both fp32, shapes ``[..., L, D]`` and ``[..., L]``.

    Example:
        >>> import torch
        >>> out, lse = merge(torch.ones(1, 2, 4), torch.zeros(1, 2),
        ...                  torch.zeros(1, 2, 4), torch.zeros(1, 2))
        >>> out[0, 0, 0].item(), round(lse[0, 0].item(), 4)
        (0.5, 0.6931)
    """
    out_a, lse_a, out_b, lse_b = out_a.float(), lse_a.float(), out_b.float(), lse_b.float()
    both_empty = torch.isneginf(lse_a) & torch.isneginf(lse_b)
    # (-inf) - (-inf) is NaN; those rows get weight 0 below, so any finite value will do.
    diff = torch.where(both_empty, 0.0, lse_b - lse_a)
    weight_b = torch.sigmoid(diff).masked_fill(both_empty, 0.0)
    out = out_a - weight_b.unsqueeze(-1) * (out_a - out_b)
    lse = torch.maximum(lse_a, lse_b) - F.logsigmoid(diff.abs())
    return out, lse
