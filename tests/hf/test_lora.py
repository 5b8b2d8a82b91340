"""LoRA on the built-in transformer against PEFT on transformers' Llama: the same adapters give
the same logits and the same gradients; the adapter exported alone loads in PEFT, the merged
model in transformers; a LoRA job trains only the adapters; bad specs are refused by field."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from shardwright.workers import lora as lora_mod
from shardwright.workers.config import LORA_TARGETS, LoraConfig
from shardwright.workers.hf import adapter as hf_adapter
from shardwright.workers.hf import export as hf_export
from shardwright.workers.hf import weights as hf_weights

from .peer import import_transformers, load_peer, save_peer

#: Every target, with an alpha that makes the scaling other than 1.
EVERY = LoraConfig(rank=4, alpha=12.0, targets=LORA_TARGETS)


@pytest.fixture(scope="module")
def transformers():
    return import_transformers()


@pytest.fixture(scope="module")
def llama(transformers, tmp_path_factory):
    return save_peer(transformers, "LlamaConfig", tmp_path_factory.mktemp("hf") / "llama", attention_bias=True)


def _peft(transformers, source, lora: LoraConfig):
    import peft

    config = peft.LoraConfig(r=lora.rank, lora_alpha=lora.alpha, lora_dropout=0.0, target_modules=list(lora.targets))
    return peft.get_peft_model(load_peer(transformers, source), config)


def _peft_modules(model) -> dict[tuple[int, str], torch.nn.Module]:
    """PEFT's wrapped modules by (layer, target)."""
    layers = model.base_model.model.model.layers
    return {(i, t): getattr(layer.self_attn if t in hf_adapter.MODULES and hf_adapter.MODULES[t] == "self_attn" else layer.mlp, t)
            for i, layer in enumerate(layers) for t in LORA_TARGETS}


def _same_adapters(peer, ours, cfg, *, seed: int = 0) -> None:
    """Random A and B drawn into PEFT's modules and copied into ours (B's rows of q_proj and
    k_proj into the interleaved rotary order, as the base weights are)."""
    gen = torch.Generator().manual_seed(seed)
    modules, mine = _peft_modules(peer), lora_mod.adapters(ours)
    assert set(mine) == {(i, t) for i in range(cfg.layers) for t in LORA_TARGETS}
    with torch.no_grad():
        for (i, target), (a, b) in mine.items():
            theirs = modules[i, target]
            for p in (theirs.lora_A["default"].weight, theirs.lora_B["default"].weight):
                p.copy_(torch.randn(p.shape, generator=gen) * 0.2)
            heads = {"q_proj": cfg.heads, "k_proj": cfg.kv_heads}.get(target)
            b_rows = theirs.lora_B["default"].weight
            a.copy_(theirs.lora_A["default"].weight)
            b.copy_(hf_weights._interleave(b_rows, heads, cfg.head_dim) if heads else b_rows)


def test_logits_and_gradients_equal_pefts(transformers, llama):
    ours = lora_mod.apply_lora(hf_weights.load_pretrained(llama), EVERY, seed=0)
    peer = _peft(transformers, llama, EVERY)
    _same_adapters(peer, ours, ours.cfg)
    tokens = torch.randint(96, (2, 23), generator=torch.Generator().manual_seed(1))
    targets = torch.randint(96, (2, 23), generator=torch.Generator().manual_seed(2))
    expected, got = peer(tokens).logits, ours(tokens, torch.arange(23))
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
    F.cross_entropy(expected.flatten(0, 1), targets.flatten()).backward()
    F.cross_entropy(got.flatten(0, 1), targets.flatten()).backward()

    modules, cfg = _peft_modules(peer), ours.cfg
    for (i, target), (a, b) in lora_mod.adapters(ours).items():
        theirs = modules[i, target]
        heads = {"q_proj": cfg.heads, "k_proj": cfg.kv_heads}.get(target)
        b_grad = hf_weights._halve(b.grad, heads, cfg.head_dim) if heads else b.grad
        torch.testing.assert_close(a.grad, theirs.lora_A["default"].weight.grad, atol=1e-5, rtol=0, msg=f"A {i} {target}")
        torch.testing.assert_close(b_grad, theirs.lora_B["default"].weight.grad, atol=1e-5, rtol=0, msg=f"B {i} {target}")
        assert b.grad.abs().max() > 1e-4  # every adapter gets a gradient worth comparing
    frozen = [n for n, p in ours.named_parameters() if p.grad is not None and ".lora_" not in n]
    assert frozen == []  # the base has no gradient: it is frozen


def test_a_fresh_adapter_is_peft_initialised_and_changes_nothing(llama):
    base = hf_weights.load_pretrained(llama)
    tokens = torch.randint(96, (1, 9), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        before = base(tokens, torch.arange(9))
    ours = lora_mod.apply_lora(base, LoraConfig(rank=8, alpha=8, targets=("q_proj", "v_proj")), seed=5)
    assert sorted({t for _, t in lora_mod.adapters(ours)}) == ["q_proj", "v_proj"]
    (a, b) = lora_mod.adapters(ours)[0, "q_proj"]
    expected = torch.empty(8, 32)
    torch.nn.init.kaiming_uniform_(expected, a=5**0.5, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a, expected) and not b.any()  # PEFT's draw for A, zero B
    with torch.no_grad():
        assert torch.equal(ours(tokens, torch.arange(9)), before)
    trainable = sorted(n for n, p in ours.named_parameters() if p.requires_grad)
    assert trainable == sorted(f"blocks.{i}.mixer.{p}.lora_{ab}.{t}" for i in range(2) for ab in "ab"
                               for p, t in (("q", "q_proj"), ("kv", "v_proj")))


def test_the_adapter_alone_loads_in_peft_and_the_merged_model_in_transformers(transformers, llama, tmp_path):
    import peft

    ours = lora_mod.apply_lora(hf_weights.load_pretrained(llama), EVERY, seed=0).eval()
    _same_adapters(_peft(transformers, llama, EVERY), ours, ours.cfg, seed=7)
    tokens = torch.randint(96, (2, 15), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        expected = ours(tokens, torch.arange(15))
        out = hf_adapter.export_adapter(ours, EVERY, tmp_path / "adapter")
        loaded = peft.PeftModel.from_pretrained(load_peer(transformers, llama), out).eval()
        torch.testing.assert_close(loaded(tokens).logits, expected, atol=1e-5, rtol=0)
        merged = hf_export.export_state(lora_mod.merged_state(ours), ours.cfg, tmp_path / "merged")
        assert not any(".lora_" in k for k in hf_weights.read_safetensors(merged))
        torch.testing.assert_close(load_peer(transformers, merged)(tokens).logits, expected, atol=1e-5, rtol=0)
        assert (expected - load_peer(transformers, llama)(tokens).logits).abs().max() > 1e-2  # the adapters matter


def test_attention_targets_on_linear_attention_layers_are_refused():
    from shardwright.workers.config import ModelConfig
    from shardwright.workers.model import Transformer

    cfg = ModelConfig(vocab_size=96, dim=32, layers=2, heads=4, kv_heads=2, ffn_dim=48, layer_kinds=("gated-delta", "softmax"))
    with pytest.raises(ValueError, match="layer 0 is gated-delta, which has no q_proj, v_proj: LoRA there can target only gate_proj, up_proj, down_proj"):
        lora_mod.apply_lora(Transformer(cfg), LoraConfig(rank=2, alpha=2), seed=0)
    ours = lora_mod.apply_lora(Transformer(cfg), LoraConfig(rank=2, alpha=2, targets=("up_proj",)), seed=0)
    assert len(lora_mod.adapters(ours)) == 2
