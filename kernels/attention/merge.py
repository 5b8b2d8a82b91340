"""Merging two partial softmax-attention results by their log-sum-exp (LSE).

Each block of a sequence-parallel kernel attends a query shard to one key/value shard and
yields a partial ``(out, lse)``. Two partials over disjoint key sets combine exactly into
the result over their union; in the stable fp32 sigmoid form (RESEARCH.md section 1)::

    out = out_a - sigmoid(lse_b - lse_a) * (out_a - out_b)
    lse = max(lse_a, lse_b) - logsigmoid(|lse_a - lse_b|)

The LSE line is ``lse_a - logsigmoid(lse_a - lse_b)`` written symmetrically, so that a row
where only one side is ``-inf`` (no keys seen yet) takes the other side unchanged. Rows
where both sides are ``-inf`` (fully masked so far) keep ``out_a`` and ``lse = -inf``
instead of turning into NaN. The merge runs in place on the fp32 accumulators, so it
allocates no output-sized temporaries (``lerp_`` is the first line, fused).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["merge_"]


def merge_(
    out: torch.Tensor, lse: torch.Tensor, block_out: torch.Tensor, block_lse: torch.Tensor
) -> None:
    """Fold a block's partial result into the running fp32 ``(out, lse)``, in place.

    Args:
        out: ``[..., L, D]`` fp32 running output (a view is fine: it is updated in place).
        lse: ``[..., L]`` fp32 running log-sum-exp; ``-inf`` marks a row that has seen no key.
        block_out: ``[..., L, D]`` the block's output (any float dtype).
        block_lse: ``[..., L]`` the block's log-sum-exp.

    Example:
        >>> import torch
        >>> out, lse = torch.ones(1, 2, 4), torch.zeros(1, 2)
        >>> merge_(out, lse, torch.zeros(1, 2, 4), torch.zeros(1, 2))
        >>> out[0, 0, 0].item(), round(lse[0, 0].item(), 4)
        (0.5, 0.6931)
    """
    block_lse = block_lse.float()
    both_empty = torch.isneginf(lse) & torch.isneginf(block_lse)
    # (-inf) - (-inf) is NaN; those rows get weight 0 below, so any finite value will do.
    diff = torch.where(both_empty, 0.0, block_lse - lse)
    weight = torch.sigmoid(diff).masked_fill_(both_empty, 0.0)
    out.lerp_(block_out.float(), weight.unsqueeze(-1))  # out - w (out - block_out), fused
    lse.copy_(torch.maximum(lse, block_lse) - F.logsigmoid(diff.abs()))
