"""A model's LoRA adapters on their own, in PEFT's layout: what ``PeftModel.from_pretrained``
loads onto the base model (``spec.model.from``, or the base exported with ``--format hf``).

The directory holds ``adapter_config.json`` and ``adapter_model.safetensors`` with PEFT's
names (``base_model.model.model.layers.{i}.self_attn.q_proj.lora_A.weight``). B of q_proj
and k_proj goes back from the interleaved rotary row order to Hugging Face's half-split one,
as their weights do; A's act on the input side and are written as they are.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import torch

from ..config import LoraConfig
from ..lora import adapters
from ..model import Transformer
from .weights import _halve

CONFIG = "adapter_config.json"
WEIGHTS = "adapter_model.safetensors"
#: The module under ``model.layers.{i}`` each target lives in.
MODULES = {"q_proj": "self_attn", "k_proj": "self_attn", "v_proj": "self_attn", "o_proj": "self_attn",
           "gate_proj": "mlp", "up_proj": "mlp", "down_proj": "mlp"}


def adapter_state(model: Transformer) -> dict[str, torch.Tensor]:
    """Every adapter of ``model`` under PEFT's names and layouts."""
    cfg, out = model.cfg, {}
    for (i, target), (a, b) in adapters(model).items():
        if target in ("q_proj", "k_proj"):
            b = _halve(b, cfg.heads if target == "q_proj" else cfg.kv_heads, cfg.head_dim)
        name = f"base_model.model.model.layers.{i}.{MODULES[target]}.{target}"
        out[f"{name}.lora_A.weight"], out[f"{name}.lora_B.weight"] = a, b
    return {k: v.detach().contiguous() for k, v in out.items()}


def adapter_config(lora: LoraConfig, base: str | None) -> dict:
    """PEFT's ``LoraConfig`` of these adapters, as ``save_pretrained`` writes it."""
    return {
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": base, "inference_mode": True,
        "r": lora.rank, "lora_alpha": lora.alpha, "lora_dropout": lora.dropout, "target_modules": list(lora.targets),
        "bias": "none", "fan_in_fan_out": False, "init_lora_weights": True, "modules_to_save": None, "use_rslora": False,
    }


def export_adapter(model: Transformer, lora: LoraConfig, out: str | Path, *, dtype: torch.dtype | None = None) -> Path:
    """Write ``model``'s adapters at ``out`` (written aside and renamed when whole)."""
    from safetensors.torch import save_file

    if re.match(r"[a-z][a-z0-9+.-]*:/", str(out)):  # a URI, perhaps with its // folded by Path
        raise ValueError(f"an adapter is written to a local directory, not to {out}")
    tensors = adapter_state(model)
    if not tensors:
        raise ValueError("the model has no LoRA adapters to export")
    if dtype is not None:
        tensors = {k: v.to(dtype) for k, v in tensors.items()}
    final = Path(out)
    partial = final.with_name(final.name + ".incomplete")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    save_file(tensors, partial / WEIGHTS, metadata={"format": "pt"})
    (partial / CONFIG).write_text(json.dumps(adapter_config(lora, model.cfg.source), indent=2))
    if final.exists():
        shutil.rmtree(final)
    os.replace(partial, final)
    return final
