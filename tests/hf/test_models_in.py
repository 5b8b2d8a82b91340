"""A Hugging Face Llama-family directory loads into the built-in transformer and gives the
logits transformers' own model gives, for each supported variant; what cannot be expressed
is refused by name."""

from __future__ import annotations

import json

import pytest
import torch

from shardwright.workers.hf import config as hf_config
from shardwright.workers.hf import weights as hf_weights

from .peer import import_transformers, load_peer, save_peer

VARIANTS = {
    # Llama 3.1-style: untied, large theta, llama3 frequency scaling (with head_dim 8 its four
    # wavelengths fall in the kept, blended and divided bands).
    "llama-untied": ("LlamaConfig", {"rope_parameters": {
        "rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
        "high_freq_factor": 4.0, "original_max_position_embeddings": 512}, "rms_norm_eps": 1e-5}),
    # Llama 3.2 1B-style tied embeddings, with attention biases on all four projections and linear scaling.
    "llama-tied": ("LlamaConfig", {"tie_word_embeddings": True, "attention_bias": True,
                                   "rope_parameters": {"rope_type": "linear", "rope_theta": 10000.0, "factor": 2.0}}),
    # Mistral 7B v0.2+: no sliding window.
    "mistral": ("MistralConfig", {"sliding_window": None, "rope_parameters": {"rope_type": "default", "rope_theta": 1e6}}),
    # Qwen2: q/k/v biases, none on o_proj; tied as the 0.5B model is.
    "qwen2": ("Qwen2Config", {"tie_word_embeddings": True, "rms_norm_eps": 1e-6}),
}


@pytest.fixture(scope="module")
def transformers():
    return import_transformers()


@pytest.mark.parametrize("variant", VARIANTS)
def test_logits_equal_transformers(transformers, tmp_path, variant):
    config_class, extra = VARIANTS[variant]
    path = save_peer(transformers, config_class, tmp_path / variant, **extra)
    peer = load_peer(transformers, path)
    ours = hf_weights.load_pretrained(path).eval()
    tokens = torch.randint(96, (2, 37), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = peer(tokens).logits
        got = ours(tokens, torch.arange(37))
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
    assert expected.std() > 0.1  # the comparison is not between near-constant logits


def test_a_sharded_bfloat16_checkpoint_loads(transformers, tmp_path):
    """As released checkpoints come: bfloat16, in several files with an index."""
    path = save_peer(transformers, "LlamaConfig", tmp_path / "bf16", dtype=torch.bfloat16, max_shard_size="20KB")
    assert len(list(path.glob("model-*-of-*.safetensors"))) > 2 and (path / hf_weights.INDEX).is_file()
    ours = hf_weights.load_pretrained(path).eval()
    assert ours.embed.weight.dtype == torch.float32  # cast up on load, as the trainer wants it
    tokens = torch.randint(96, (1, 13), generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        torch.testing.assert_close(ours(tokens, torch.arange(13)), load_peer(transformers, path)(tokens).logits, atol=1e-5, rtol=0)


def test_the_config_maps_every_variant_field(transformers, tmp_path):
    config_class, extra = VARIANTS["qwen2"]
    cfg = hf_config.read_config(save_peer(transformers, config_class, tmp_path / "q", **extra))
    assert (cfg.dim, cfg.heads, cfg.kv_heads, cfg.ffn_dim, cfg.layers, cfg.vocab_size) == (32, 4, 2, 48, 2, 96)
    assert (cfg.tie_embeddings, cfg.qkv_bias, cfg.out_bias, cfg.norm_eps) == (True, True, False, 1e-6)
    assert cfg.source == str(tmp_path / "q")


def test_transformers_4_configs_read_as_well():
    """Checkpoints on the Hub keep rope_theta and rope_scaling at the top level."""
    cfg = hf_config.from_hf({
        "model_type": "llama", "vocab_size": 128256, "hidden_size": 2048, "intermediate_size": 8192,
        "num_hidden_layers": 16, "num_attention_heads": 32, "num_key_value_heads": 8, "rope_theta": 500000.0,
        "rope_scaling": {"factor": 32.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
                         "original_max_position_embeddings": 8192, "rope_type": "llama3"},
        "tie_word_embeddings": True, "torch_dtype": "bfloat16", "max_position_embeddings": 131072,
    })
    assert cfg.rope_theta == 500000.0 and cfg.rope_scaling.factor == 32.0 and cfg.kv_heads == 8


BASE = {"model_type": "mistral", "vocab_size": 96, "hidden_size": 32, "intermediate_size": 48,
        "num_hidden_layers": 2, "num_attention_heads": 4, "max_position_embeddings": 32768}


@pytest.mark.parametrize(("change", "field"), [
    ({"sliding_window": 4096}, "sliding_window"),
    ({"hidden_act": "gelu"}, "hidden_act"),
    ({"mlp_bias": True}, "mlp_bias"),
    ({"head_dim": 16}, "head_dim"),
    ({"rope_scaling": {"rope_type": "yarn", "factor": 4.0}}, "rope_scaling.rope_type"),
    ({"quantization_config": {"quant_method": "gptq"}}, "quantization_config"),
    ({"model_type": "gemma2"}, "model_type"),
    ({"hidden_size": None}, "hidden_size"),
], ids=lambda v: v if isinstance(v, str) else None)
def test_what_the_model_cannot_express_is_refused_by_name(change, field):
    with pytest.raises(hf_config.UnsupportedConfig, match=rf"^config.json: {field}: ") as err:
        hf_config.from_hf(BASE | change)
    assert err.value.field == field


def test_missing_tensors_are_named(transformers, tmp_path):
    path = save_peer(transformers, "LlamaConfig", tmp_path / "m")
    config = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps(config | {"attention_bias": True}))
    with pytest.raises(KeyError, match=r"safetensors lack 'layers.0.self_attn.q_proj.bias'"):
        hf_weights.load_pretrained(path)
