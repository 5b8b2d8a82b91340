"""LoRA: low-rank adapters on the built-in transformer's projections, in PEFT's arithmetic.

A target projection ``W`` becomes ``W x + alpha/rank * B A dropout(x)`` with ``W`` frozen,
A ``[rank, in]`` drawn as PEFT draws it (Kaiming-uniform, a = sqrt(5)) from the job's seed,
and B ``[out, rank]`` zero, so training starts from the base model exactly. Targets carry
Hugging Face's module names (``q_proj`` ... ``down_proj``). k_proj and v_proj are the two
halves of the stacked ``kv`` projection here: each has its own A and B, so each exports to
its own PEFT module. B of q_proj and k_proj has its rows in the interleaved rotary order of
the weights it adapts (``workers.hf.weights``); ``workers.hf.adapter`` permutes them back.

``LoraLinear`` keeps the base's parameter names (``weight``, ``bias``), so checkpoints and
the Hugging Face mapping see the same names as without LoRA; the adapters add
``lora_a.<target>`` and ``lora_b.<target>`` next to them.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .config import LORA_ATTENTION_TARGETS, LORA_TARGETS, LoraConfig
from .mixers import SoftmaxAttention
from .model import Transformer

#: Hugging Face module name -> the projection under a block it is. Targets sharing one
#: (k_proj, v_proj) are equal row blocks of its output, in this order.
PLACES = {
    "q_proj": "mixer.q", "k_proj": "mixer.kv", "v_proj": "mixer.kv", "o_proj": "mixer.out",
    "gate_proj": "ffn.gate", "up_proj": "ffn.up", "down_proj": "ffn.down",
}


class LoraDropout(nn.Module):
    """Dropout drawn from a generator the trainer reseeds every step (``reseed``), so a
    resumed run draws the masks the uninterrupted one drew."""

    def __init__(self, p: float, generator: torch.Generator) -> None:
        super().__init__()
        self.p, self.generator = p, generator

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        keep = torch.rand(x.shape, generator=self.generator, device=x.device) >= self.p
        return x * keep.to(x.dtype) / (1 - self.p)


class LoraLinear(nn.Module):
    """A frozen ``nn.Linear`` whose output parts (``sizes`` rows each) named in ``adapted``
    get ``scaling * B A dropout(x)`` added."""

    def __init__(self, base: nn.Linear, parts: list[tuple[str, int]], adapted: list[str], cfg: LoraConfig,
                 init: torch.Generator, dropout: LoraDropout) -> None:
        super().__init__()
        self.weight = base.weight.requires_grad_(False)
        self.bias = base.bias.requires_grad_(False) if base.bias is not None else None
        self.parts, self.scaling, self.dropout = parts, cfg.scaling, dropout
        self.lora_a, self.lora_b = nn.ParameterDict(), nn.ParameterDict()
        for name, rows in parts:
            if name in adapted:
                a = torch.empty(cfg.rank, base.in_features, dtype=base.weight.dtype)
                nn.init.kaiming_uniform_(a, a=math.sqrt(5), generator=init)
                self.lora_a[name] = nn.Parameter(a)
                self.lora_b[name] = nn.Parameter(torch.zeros(rows, cfg.rank, dtype=base.weight.dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.linear(x, self.weight, self.bias)
        h = self.dropout(x)
        pieces = list(out.split([rows for _, rows in self.parts], dim=-1))
        for i, (name, _) in enumerate(self.parts):
            if name in self.lora_a:
                pieces[i] = pieces[i] + F.linear(F.linear(h, self.lora_a[name]), self.lora_b[name]) * self.scaling
        return pieces[0] if len(pieces) == 1 else torch.cat(pieces, dim=-1)

    def delta(self) -> torch.Tensor:
        """``scaling * B A`` over every output row (zero rows for parts without an adapter)."""
        rows = []
        for name, size in self.parts:
            if name in self.lora_a:
                rows.append(self.lora_b[name] @ self.lora_a[name] * self.scaling)
            else:
                rows.append(self.weight.new_zeros(size, self.weight.shape[1]))
        return torch.cat(rows)


def apply_lora(model: Transformer, cfg: LoraConfig, *, seed: int) -> Transformer:
    """Freeze ``model`` and put adapters on ``cfg.targets`` of every block, in place.

    A's are drawn block by block, targets in ``LORA_TARGETS`` order, from ``seed``: every
    rank draws the same. Raises ValueError for attention targets on a linear-attention layer.
    """
    for p in model.parameters():
        p.requires_grad_(False)
    init, dropout = torch.Generator().manual_seed(seed), LoraDropout(cfg.dropout, torch.Generator().manual_seed(seed))
    targets = [t for t in LORA_TARGETS if t in cfg.targets]
    for i, block in enumerate(model.blocks):
        if not isinstance(block.mixer, SoftmaxAttention) and (bad := [t for t in targets if t in LORA_ATTENTION_TARGETS]):
            raise ValueError(f"layer {i} is {model.cfg.layer_kinds[i]}, which has no {', '.join(bad)}: "
                             f"LoRA there can target only gate_proj, up_proj, down_proj")
        for path in dict.fromkeys(PLACES[t] for t in targets):  # each projection once, kv for k and v
            parent_path, _, attr = path.rpartition(".")
            parent = block.get_submodule(parent_path)
            base = getattr(parent, attr)
            names = [n for n, p in PLACES.items() if p == path]
            parts = [(n, base.out_features // len(names)) for n in names]
            setattr(parent, attr, LoraLinear(base, parts, [n for n in names if n in targets], cfg, init, dropout))
    return model


def reseed(model: nn.Module, seed: int, step: int, rank: int) -> None:
    """Dropout masks of this step on this rank: a pure function of (seed, step, rank)."""
    for module in model.modules():
        if isinstance(module, LoraDropout):
            module.generator.manual_seed(hash((seed, step, rank)) & (2**63 - 1))
            return  # one generator, shared by every adapter


def merged_state(model: Transformer) -> dict[str, torch.Tensor]:
    """The state dict of a plain ``Transformer`` whose weights are ``W + scaling * B A``."""
    state = {k: v for k, v in model.state_dict().items() if ".lora_" not in k}
    with torch.no_grad():
        for name, module in model.named_modules():
            if isinstance(module, LoraLinear):
                state[f"{name}.weight"] = module.weight + module.delta().to(module.weight.dtype)
    return state


def adapters(model: Transformer) -> dict[tuple[int, str], tuple[torch.Tensor, torch.Tensor]]:
    """``(layer, target) -> (A, B)`` of every adapter, in this model's row order."""
    out = {}
    for i, block in enumerate(model.blocks):
        for target in LORA_TARGETS:
            parent_path, _, attr = PLACES[target].rpartition(".")
            module = getattr(block.get_submodule(parent_path), attr, None)
            if isinstance(module, LoraLinear) and target in module.lora_a:
                out[i, target] = (module.lora_a[target], module.lora_b[target])
    return out
