"""Hugging Face ``config.json`` of the Llama family <-> ``ModelConfig``. Pure: JSON and pydantic.

Llama 2/3, Mistral and Qwen2 share one architecture (RMSNorm, rotary positions, GQA,
SwiGLU); what differs is a few fields, each mapped here or refused by name. Every key of a
config is either mapped, known not to change the forward pass (token ids, defaults for
generation, bookkeeping) or refused: a field this module has never seen may change the
model, so it is an error rather than a silent difference from the checkpoint's own model.

The operator imports this module (``spec.model.from`` resolves through it), so it must
never import torch.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..config import ModelConfig, RopeScaling

CONFIG = "config.json"
ARCHITECTURES = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM", "qwen2": "Qwen2ForCausalLM"}

#: Keys that do not change the forward pass: ids and defaults for generation, training-time
#: settings of the original run, and the bookkeeping ``save_pretrained`` writes.
HARMLESS = frozenset({
    "_name_or_path", "architectures", "bos_token_id", "eos_token_id", "pad_token_id",
    "sep_token_id", "decoder_start_token_id", "torch_dtype", "dtype", "transformers_version",
    "use_cache", "initializer_range", "max_position_embeddings", "pretraining_tp",
    "output_attentions", "output_hidden_states", "return_dict", "is_encoder_decoder",
    "id2label", "label2id", "problem_type", "chunk_size_feed_forward", "tie_encoder_decoder",
    "tokenizer_class", "prefix", "task_specific_params", "finetuning_task", "add_cross_attention",
    "max_window_layers",
})
#: Keys mapped below (some only when they hold the value the project's model can express).
MAPPED = frozenset({
    "model_type", "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
    "num_attention_heads", "num_key_value_heads", "head_dim", "hidden_act", "rms_norm_eps",
    "rope_theta", "rope_scaling", "rope_parameters", "tie_word_embeddings", "attention_bias",
    "mlp_bias", "attention_dropout", "sliding_window", "use_sliding_window", "layer_types",
})


#: Keys without which there is no model to build.
REQUIRED = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads")


class UnsupportedConfig(ValueError):
    """A config field whose value the project's transformer cannot express; ``field`` names it."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"config.json: {field}: {message}")
        self.field = field


def read_config(path: str | Path) -> ModelConfig:
    """The ``ModelConfig`` of a Hugging Face model directory; ``source`` is set to ``path``."""
    file = Path(path) / CONFIG
    if not file.is_file():
        raise FileNotFoundError(f"{path} is not a Hugging Face model directory: no {CONFIG}")
    cfg = from_hf(json.loads(file.read_text()))
    return cfg.model_copy(update={"source": str(path)})


def from_hf(hf: dict[str, Any]) -> ModelConfig:
    """Map a Llama/Mistral/Qwen2 config dict; raises ``UnsupportedConfig`` naming the field."""
    model_type = hf.get("model_type")
    if model_type not in ARCHITECTURES:
        raise UnsupportedConfig("model_type", f"{model_type!r} is not one of {', '.join(ARCHITECTURES)}")
    for key in hf:
        if key not in HARMLESS and key not in MAPPED:
            raise UnsupportedConfig(key, "unknown field; it may change the model, so it is not ignored")
    _require(hf, "hidden_act", "silu", "only SwiGLU with SiLU is implemented")
    _require(hf, "mlp_bias", False, "MLP biases are not implemented")
    _require(hf, "attention_dropout", 0.0, "attention dropout is not implemented")
    _check_window(hf, model_type)

    if missing := [k for k in REQUIRED if hf.get(k) is None]:
        raise UnsupportedConfig(missing[0], "required field is missing")
    dim, heads = hf["hidden_size"], hf["num_attention_heads"]
    if hf.get("head_dim") not in (None, dim // heads) or dim % heads:
        raise UnsupportedConfig("head_dim", f"must be hidden_size / num_attention_heads ({dim}/{heads}); got {hf.get('head_dim')}")
    # Qwen2 always has q/k/v biases and none on o_proj; Llama's attention_bias covers all four.
    qkv_bias = out_bias = bool(hf.get("attention_bias", False))
    if model_type == "qwen2":
        qkv_bias, out_bias = True, False
    theta, scaling = _rope(hf)
    layers = hf["num_hidden_layers"]
    return ModelConfig(
        vocab_size=hf["vocab_size"], dim=dim, layers=layers, heads=heads,
        kv_heads=hf.get("num_key_value_heads") or heads, ffn_dim=hf["intermediate_size"],
        layer_kinds=("softmax",) * layers, rope_theta=theta, rope_scaling=scaling,
        norm_eps=hf.get("rms_norm_eps", 1e-6), tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
        qkv_bias=qkv_bias, out_bias=out_bias,
    )


def to_hf(cfg: ModelConfig) -> dict[str, Any]:
    """A config.json for ``cfg``: ``qwen2`` when only q/k/v have biases, else ``llama``."""
    if any(kind != "softmax" for kind in cfg.layer_kinds):
        raise ValueError(f"only softmax-attention models export to Hugging Face; layer kinds are {sorted(set(cfg.layer_kinds))}")
    model_type = "qwen2" if cfg.qkv_bias and not cfg.out_bias else "llama"
    if cfg.qkv_bias != cfg.out_bias and model_type == "llama":
        raise ValueError("a bias on the output projection alone has no Hugging Face Llama-family equivalent")
    hf: dict[str, Any] = {
        "architectures": [ARCHITECTURES[model_type]], "model_type": model_type,
        "vocab_size": cfg.vocab_size, "hidden_size": cfg.dim, "intermediate_size": cfg.ffn_dim,
        "num_hidden_layers": cfg.layers, "num_attention_heads": cfg.heads,
        "num_key_value_heads": cfg.kv_heads, "head_dim": cfg.head_dim, "hidden_act": "silu",
        "rms_norm_eps": cfg.norm_eps, "rope_theta": cfg.rope_theta,
        "rope_scaling": _rope_scaling_out(cfg.rope_scaling),
        "tie_word_embeddings": cfg.tie_embeddings, "attention_dropout": 0.0,
        "max_position_embeddings": cfg.rope_scaling.original_max_positions * int(cfg.rope_scaling.factor)
        if cfg.rope_scaling else 8192,
        "torch_dtype": "float32", "bos_token_id": None, "eos_token_id": None,
    }
    if model_type == "llama":
        hf |= {"attention_bias": cfg.qkv_bias, "mlp_bias": False}
    else:
        hf |= {"use_sliding_window": False, "sliding_window": None}
    return hf


# ----------------------------------------------------------------------------- helpers


def _require(hf: dict[str, Any], key: str, value: Any, why: str) -> None:
    if key in hf and hf[key] != value:
        raise UnsupportedConfig(key, f"{why} (got {hf[key]!r}, need {value!r})")


def _check_window(hf: dict[str, Any], model_type: str) -> None:
    """Sliding-window attention is refused unless it never takes effect."""
    if model_type == "qwen2" and not hf.get("use_sliding_window", False):
        window = None  # Qwen2 writes a window but uses it only with use_sliding_window
    else:
        window = hf.get("sliding_window")
    if window is not None and window < hf.get("max_position_embeddings", 0):
        raise UnsupportedConfig("sliding_window", f"sliding-window attention ({window} tokens) is not implemented")
    kinds = set(hf.get("layer_types") or ["full_attention"])
    if kinds != {"full_attention"}:
        raise UnsupportedConfig("layer_types", f"only full_attention layers are implemented; got {sorted(kinds)}")


def _rope(hf: dict[str, Any]) -> tuple[float, RopeScaling | None]:
    """(theta, scaling) from ``rope_theta`` + ``rope_scaling`` (transformers 4) or
    ``rope_parameters`` (transformers 5)."""
    params = dict(hf.get("rope_parameters") or hf.get("rope_scaling") or {})
    field = "rope_parameters" if hf.get("rope_parameters") else "rope_scaling"
    theta = float(params.pop("rope_theta", hf.get("rope_theta", 10000.0)))
    kind = params.pop("rope_type", params.pop("type", "default"))
    if kind == "default":
        return theta, None
    if kind not in ("linear", "llama3"):
        raise UnsupportedConfig(f"{field}.rope_type", f"{kind!r} is not implemented (default, linear and llama3 are)")
    known = {"factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"}
    if extra := sorted(set(params) - known):
        raise UnsupportedConfig(f"{field}.{extra[0]}", "not implemented for rotary scaling")
    scaling = {"type": kind, "factor": params["factor"]}
    if kind == "llama3":
        scaling |= {
            "low_freq_factor": params["low_freq_factor"], "high_freq_factor": params["high_freq_factor"],
            "original_max_positions": params["original_max_position_embeddings"],
        }
    return theta, RopeScaling(**scaling)


def _rope_scaling_out(scaling: RopeScaling | None) -> dict[str, Any] | None:
    if scaling is None:
        return None
    if scaling.type == "linear":
        return {"rope_type": "linear", "factor": scaling.factor}
    return {
        "rope_type": "llama3", "factor": scaling.factor, "low_freq_factor": scaling.low_freq_factor,
        "high_freq_factor": scaling.high_freq_factor,
        "original_max_position_embeddings": scaling.original_max_positions,
    }
