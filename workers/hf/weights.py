"""Hugging Face Llama-family weights <-> the built-in ``Transformer``'s state dict.

Names map one to one except two places where the layouts differ:

- k_proj and v_proj are one ``kv`` projection here, ``[k; v]`` stacked along the output;
- rotary pairs: Hugging Face rotates channel ``i`` with ``i + D/2`` of each head, the
  built-in ``Rotary`` rotates ``2i`` with ``2i+1``. Permuting the rows of q and k (and their
  biases) per head from one order to the other gives the same attention scores exactly,
  since q.k is a sum over channels and both are permuted alike.

Safetensors files are read and written with the ``safetensors`` package, imported when
called so that importing this module costs nothing more than torch.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ..config import ModelConfig
from ..mixers import SequenceContext
from ..model import Transformer
from .config import read_config

INDEX = "model.safetensors.index.json"
SINGLE = "model.safetensors"
#: Hugging Face's default shard size: 5 GB per file.
MAX_SHARD_BYTES = 5 * 1000**3


def load_pretrained(path: str | Path, ctx: SequenceContext | None = None) -> Transformer:
    """The built-in transformer with the architecture and weights of a Hugging Face directory."""
    model = Transformer(read_config(path), ctx)
    load_weights(model, path)
    return model


def load_weights(model: Transformer, path: str | Path) -> None:
    """Copy a Hugging Face directory's safetensors into ``model`` (cast to its dtype)."""
    model.load_state_dict(from_hf_state(read_safetensors(path), model.cfg))


def from_hf_state(hf: dict[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """Hugging Face tensor names and layouts -> ``Transformer.state_dict()`` names and layouts."""
    hf = {k.removeprefix("model."): v for k, v in hf.items() if not k.endswith("rotary_emb.inv_freq")}
    taken: set[str] = set()

    def take(name: str) -> torch.Tensor:
        if name not in hf:
            raise KeyError(f"safetensors lack {name!r} (a {cfg.layers}-layer model with these biases needs it)")
        taken.add(name)
        return hf[name]

    out = {"embed.weight": take("embed_tokens.weight"), "norm.weight": take("norm.weight")}
    if cfg.tie_embeddings:
        out["head.weight"] = out["embed.weight"]
        taken.add("lm_head.weight")  # some tied checkpoints store it anyway; the embedding wins
    else:
        out["head.weight"] = take("lm_head.weight")
    d, heads, kv_heads = cfg.head_dim, cfg.heads, cfg.kv_heads
    for i in range(cfg.layers):
        a, m, b = f"layers.{i}.self_attn.", f"layers.{i}.mlp.", f"blocks.{i}."
        for part in ["weight"] + (["bias"] if cfg.qkv_bias else []):
            q = _interleave(take(f"{a}q_proj.{part}"), heads, d)
            k = _interleave(take(f"{a}k_proj.{part}"), kv_heads, d)
            out[f"{b}mixer.q.{part}"] = q
            out[f"{b}mixer.kv.{part}"] = torch.cat([k, take(f"{a}v_proj.{part}")])
        out[f"{b}mixer.out.weight"] = take(f"{a}o_proj.weight")
        if cfg.out_bias:
            out[f"{b}mixer.out.bias"] = take(f"{a}o_proj.bias")
        out[f"{b}mixer_norm.weight"] = take(f"layers.{i}.input_layernorm.weight")
        out[f"{b}ffn_norm.weight"] = take(f"layers.{i}.post_attention_layernorm.weight")
        for ours, theirs in (("gate", "gate_proj"), ("up", "up_proj"), ("down", "down_proj")):
            out[f"{b}ffn.{ours}.weight"] = take(f"{m}{theirs}.weight")
    if left := sorted(set(hf) - taken):
        raise KeyError(f"safetensors hold tensors this config does not use, e.g. {left[:3]}")
    return out


def to_hf_state(state: dict[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """``Transformer.state_dict()`` -> Hugging Face names and layouts (the inverse of above)."""
    out = {"model.embed_tokens.weight": state["embed.weight"], "model.norm.weight": state["norm.weight"]}
    if not cfg.tie_embeddings:  # tied checkpoints carry no lm_head: transformers ties it on load
        out["lm_head.weight"] = state["head.weight"]
    d, heads, kv_heads = cfg.head_dim, cfg.heads, cfg.kv_heads
    for i in range(cfg.layers):
        a, m, b = f"model.layers.{i}.self_attn.", f"model.layers.{i}.mlp.", f"blocks.{i}."
        for part in ["weight"] + (["bias"] if cfg.qkv_bias else []):
            k, v = state[f"{b}mixer.kv.{part}"].split(kv_heads * d)
            out[f"{a}q_proj.{part}"] = _halve(state[f"{b}mixer.q.{part}"], heads, d)
            out[f"{a}k_proj.{part}"] = _halve(k, kv_heads, d)
            out[f"{a}v_proj.{part}"] = v
        out[f"{a}o_proj.weight"] = state[f"{b}mixer.out.weight"]
        if cfg.out_bias:
            out[f"{a}o_proj.bias"] = state[f"{b}mixer.out.bias"]
        out[f"model.layers.{i}.input_layernorm.weight"] = state[f"{b}mixer_norm.weight"]
        out[f"model.layers.{i}.post_attention_layernorm.weight"] = state[f"{b}ffn_norm.weight"]
        for ours, theirs in (("gate", "gate_proj"), ("up", "up_proj"), ("down", "down_proj")):
            out[f"{m}{theirs}.weight"] = state[f"{b}ffn.{ours}.weight"]
    return {k: v.detach().contiguous() for k, v in out.items()}


# ----------------------------------------------------------------------------- safetensors files


def read_safetensors(path: str | Path) -> dict[str, torch.Tensor]:
    """Every tensor of a directory: the shards its index names, or its one ``model.safetensors``."""
    from safetensors.torch import load_file

    root = Path(path)
    if (root / INDEX).is_file():
        files = sorted(set(json.loads((root / INDEX).read_text())["weight_map"].values()))
    elif (root / SINGLE).is_file():
        files = [SINGLE]
    else:
        raise FileNotFoundError(f"{root} has neither {INDEX} nor {SINGLE}")
    tensors: dict[str, torch.Tensor] = {}
    for name in files:
        tensors.update(load_file(root / name))
    return tensors


def write_safetensors(tensors: dict[str, torch.Tensor], path: str | Path, *, max_shard_bytes: int = MAX_SHARD_BYTES) -> list[str]:
    """Write ``tensors`` as ``model.safetensors`` or as shards plus an index; the file names."""
    from safetensors.torch import save_file

    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for name, t in tensors.items():
        nbytes = t.numel() * t.element_size()
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = t
        size += nbytes
    root = Path(path)
    meta = {"format": "pt"}  # transformers reads only checkpoints marked as PyTorch tensors
    if len(shards) == 1:
        save_file(shards[0], root / SINGLE, metadata=meta)
        return [SINGLE]
    names = [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    for name, shard in zip(names, shards):
        save_file(shard, root / name, metadata=meta)
    index = {
        "metadata": {"total_size": sum(t.numel() * t.element_size() for t in tensors.values())},
        "weight_map": {t: name for name, shard in zip(names, shards) for t in shard},
    }
    (root / INDEX).write_text(json.dumps(index, indent=2))
    return [*names, INDEX]


# ----------------------------------------------------------------------------- rotary layouts


def _interleave(w: torch.Tensor, heads: int, d: int) -> torch.Tensor:
    """Rows of each head from Hugging Face's half-split order to the interleaved one."""
    return w.reshape(heads, 2, d // 2, *w.shape[1:]).transpose(1, 2).reshape(w.shape)


def _halve(w: torch.Tensor, heads: int, d: int) -> torch.Tensor:
    """The inverse of ``_interleave``."""
    return w.reshape(heads, d // 2, 2, *w.shape[1:]).transpose(1, 2).reshape(w.shape)
