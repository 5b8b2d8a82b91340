"""The optimisation settings a rank applies: AdamW's parameter groups, the learning-rate
schedule and the forward pass's precision (spec.training)."""

from __future__ import annotations

import contextlib
import math
from typing import Any

import torch


def decay_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """The trainable parameters as AdamW groups: matrices (projections, embeddings, LoRA's A
    and B) decay, vectors (norm scales, biases) do not, as is usual. Without weight decay one
    group, as checkpoints written before the split hold: they resume."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    if weight_decay == 0:
        return [{"params": trainable, "weight_decay": 0.0}]
    groups = [{"params": [p for p in trainable if p.ndim >= 2], "weight_decay": weight_decay},
              {"params": [p for p in trainable if p.ndim < 2], "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


def autocast(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    """The forward pass's context: bf16 autocast for ``bf16`` (CPU included) and for ``auto``
    on a device with bfloat16 (CUDA); fp32 otherwise. Weights and optimizer stay float32."""
    if precision == "auto":
        precision = "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "fp32"
    return torch.autocast(device.type, dtype=torch.bfloat16) if precision == "bf16" else contextlib.nullcontext()


def lr_at(step: int, cfg) -> float:
    """Linear warmup to ``lr``, then cosine decay to a tenth of it at the last step."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(cfg.steps - cfg.warmup_steps, 1)
    return cfg.lr * (0.1 + 0.45 * (1 + math.cos(math.pi * min(progress, 1.0))))
