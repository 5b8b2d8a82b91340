"""LoRA on the built-in transformer against PEFT on transformers' Llama: the same adapters give
the same logits and the same gradients; the adapter exported alone loads in PEFT, the merged
model in transformers; a LoRA job trains only the adapters; bad specs are refused by field."""

from __future__ import annotations

import math
import shutil
import threading

import pytest
import torch
import torch.nn.functional as F
import yaml

from shardwright.operator import cli
from shardwright.operator.api import validate
from shardwright.operator.controller import JobRef, worker_config
from shardwright.operator.planner import plan_uniform
from shardwright.workers import lora as lora_mod
from shardwright.workers import optim, train
from shardwright.workers.config import LORA_TARGETS, LoraConfig, ModelConfig, RankEnv
from shardwright.workers.hf import adapter as hf_adapter
from shardwright.workers.hf import export as hf_export
from shardwright.workers.hf import weights as hf_weights
from shardwright.workers.manifest import committed
from shardwright.workers.model import Transformer
from shardwright.workers.serve.weights import build_model, load_checkpoint
from tests.observability.prom import free_port
from tests.support.manifests import edited

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
        merged = hf_export.export_model(ours, tmp_path / "merged")  # as spec.export and shardwright export write it
        assert not any(".lora_" in k for k in hf_weights.read_safetensors(merged))
        torch.testing.assert_close(load_peer(transformers, merged)(tokens).logits, expected, atol=1e-5, rtol=0)
        assert (expected - load_peer(transformers, llama)(tokens).logits).abs().max() > 1e-2  # the adapters matter
    with pytest.raises(ValueError, match="an adapter is written to a local directory, not to s3://b/a"):
        hf_adapter.export_adapter(ours, EVERY, "s3://b/a")


def test_attention_targets_on_linear_attention_layers_are_refused():
    cfg = ModelConfig(vocab_size=96, dim=32, layers=2, heads=4, kv_heads=2, ffn_dim=48, layer_kinds=("gated-delta", "softmax"))
    with pytest.raises(ValueError, match="layer 0 is gated-delta, which has no q_proj, v_proj: LoRA there can target only gate_proj, up_proj, down_proj"):
        lora_mod.apply_lora(Transformer(cfg), LoraConfig(rank=2, alpha=2), seed=0)
    ours = lora_mod.apply_lora(Transformer(cfg), LoraConfig(rank=2, alpha=2, targets=("up_proj",)), seed=0)
    assert len(lora_mod.adapters(ours)) == 2


# ----------------------------------------------------------------------------- a LoRA job


def _job(source, **lora):
    doc = edited({
        "spec.model": {"from": str(source)},
        "spec.data": {"task": "markov-copy", "seqLen": 16, "globalBatch": 2, "microBatch": 1},
        "spec.training": {"steps": 4, "lr": 0.05, "warmupSteps": 1, "weightDecay": 0.1, "lora": lora},
        "spec.workers[0].replicas": 1,
        "spec.checkpoint": {"intervalSteps": 2, "keep": 4, "async": False},
    })
    job, problems = validate(doc)
    assert problems == [], problems
    return doc, job


def _train(job, checkpoints, *, stop_at_once=False, resume_from=None) -> dict:
    """The trainer as one gloo rank in this process (what every rank of ``shardwright run`` runs)."""
    plan = plan_uniform(job.spec)
    config = worker_config(JobRef("lora", "default", str(checkpoints)), job.spec, plan, 1, None)
    config = config.model_copy(update={"checkpoint": config.checkpoint.model_copy(update={"resume_from": resume_from})})
    env = RankEnv(rank=0, world_size=1, local_rank=0, master_addr="127.0.0.1", master_port=free_port())
    stop = threading.Event()
    if stop_at_once:
        stop.set()
    return train.main(config, env, stop)


def _checkpoint_state(job, path) -> dict[str, torch.Tensor]:
    model = lora_mod.apply_lora(Transformer(job.spec.model.resolve()), job.spec.training.lora.resolve(), seed=0)
    load_checkpoint(model, path)
    return model.state_dict()


def test_a_lora_job_trains_only_the_adapters_and_resumes_bit_identically(transformers, llama, tmp_path):
    doc, job = _job(llama, rank=4, alpha=8, dropout=0.1, targets=["q_proj", "k_proj", "v_proj", "down_proj"])
    assert _train(job, tmp_path / "whole")["state"] == "complete"
    whole = _checkpoint_state(job, tmp_path / "whole")
    base = hf_weights.load_pretrained(llama).state_dict()
    assert {k for k in whole if ".lora_" not in k} == set(base)
    assert all(torch.equal(whole[k], v) for k, v in base.items())  # the base weights, bit for bit
    assert all(whole[k].abs().max() > 0 for k in whole if ".lora_b." in k)  # every B moved off zero

    assert _train(job, tmp_path / "parts", stop_at_once=True)["state"] == "stopped"  # stops with a checkpoint
    [first] = committed(tmp_path / "parts")
    assert 0 < first["step"] < 4
    assert _train(job, tmp_path / "parts", resume_from=first["path"])["state"] == "complete"
    resumed = _checkpoint_state(job, tmp_path / "parts")
    assert all(torch.equal(resumed[k], v) for k, v in whole.items())  # dropout masks and AdamW state included

    # shardwright export: the model with the adapters merged, or (--adapter) the adapters alone
    workdir = tmp_path / "run"
    shutil.copytree(tmp_path / "whole", workdir / "checkpoints")
    (workdir / "job.yaml").write_text(yaml.safe_dump(doc))
    args = ["export", str(workdir / "job.yaml"), "--workdir", str(workdir), "--format", "hf"]
    assert cli.main([*args, "-o", str(tmp_path / "merged")]) == 0
    assert cli.main([*args, "--adapter", "-o", str(tmp_path / "adapter")]) == 0
    import peft

    ours = lora_mod.apply_lora(Transformer(job.spec.model.resolve()), job.spec.training.lora.resolve(), seed=0).eval()
    ours.load_state_dict(whole)
    tokens = torch.randint(96, (2, 13), generator=torch.Generator().manual_seed(8))
    with torch.no_grad():
        expected = ours(tokens, torch.arange(13))
        torch.testing.assert_close(load_peer(transformers, tmp_path / "merged")(tokens).logits, expected, atol=1e-5, rtol=0)
        adapted = peft.PeftModel.from_pretrained(load_peer(transformers, llama), tmp_path / "adapter").eval()
        torch.testing.assert_close(adapted(tokens).logits, expected, atol=1e-5, rtol=0)
    # a ServingPool's model.checkpoint would load only the frozen weights: refused, pointing at the export
    with pytest.raises(ValueError, match="holds LoRA adapters.*merged export"):
        build_model(job.spec.model.resolve(), seed=0, checkpoint=str(tmp_path / "whole"))


def test_adapter_export_of_a_job_without_lora_is_refused(tmp_path, capsys):
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(edited({"spec.training": {"steps": 2}})))
    assert cli.main(["export", str(tmp_path / "job.yaml"), "--workdir", str(tmp_path), "--adapter", "-o", str(tmp_path / "a")]) == 1
    assert capsys.readouterr().err == (f"{tmp_path / 'job.yaml'}: --adapter exports LoRA adapters and spec.training.lora is unset; "
                                       "export without --adapter\n")


# ----------------------------------------------------------------------------- the spec


def _problems(training: dict, model: dict | None = None) -> list[tuple[str, str]]:
    edits = {"spec.training": {"steps": 2, **training}} | ({"spec.model": model} if model else {})
    _, problems = validate(edited(edits))
    return [(p.path, p.message) for p in problems]


def test_lora_defaults_follow_peft_and_render_into_the_worker_config():
    job, problems = validate(edited({"spec.training": {"steps": 2, "lora": {"rank": 16}, "precision": "bf16"}}))
    assert problems == []
    config = worker_config(JobRef("t", "default", "/c"), job.spec, plan_uniform(job.spec), 1, None)
    assert config.lora == LoraConfig(rank=16, alpha=16, dropout=0.0, targets=("q_proj", "v_proj"))
    assert config.optim.precision == "bf16"
    job, _ = validate(edited({"spec.training": {"steps": 2}}))
    assert job.spec.training.lora is None and job.spec.training.precision == "auto"


def test_bad_lora_specs_are_refused_naming_the_field():
    assert _problems({"lora": {"rank": 0}}) == [("spec.training.lora.rank", "must be >= 1 (got 0)")]
    [(path, message)] = _problems({"lora": {"targets": ["q_proj", "qkv"]}})
    assert path == "spec.training.lora.targets[1]"
    assert all(t in message for t in LORA_TARGETS) and "'qkv'" in message
    assert _problems({"lora": {"rank": 4}}, model={"preset": "tiny", "layerPattern": ["gated-delta", "softmax"]}) == [
        ("spec.training.lora.targets", "q_proj, v_proj name attention projections, which gated-delta layers do not have; "
                                       "with linear-attention layers LoRA can target gate_proj, up_proj, down_proj")]
    assert _problems({"lora": {"targets": ["up_proj"]}}, model={"preset": "tiny", "layerPattern": ["gated-delta", "softmax"]}) == []
    [(path, _)] = _problems({"precision": "fp16"})
    assert path == "spec.training.precision"


# ----------------------------------------------------------------------------- optimizer and precision


def test_weight_decay_spares_norms_and_biases():
    model = Transformer(ModelConfig(vocab_size=96, dim=32, layers=1, heads=4, kv_heads=2, ffn_dim=48,
                                    layer_kinds=("softmax",), qkv_bias=True))
    names = {id(p): n for n, p in model.named_parameters()}
    decayed, spared = optim.decay_groups(model, 0.1)
    assert (decayed["weight_decay"], spared["weight_decay"]) == (0.1, 0.0)
    assert sorted(names[id(p)] for p in spared["params"]) == [
        "blocks.0.ffn_norm.weight", "blocks.0.mixer.kv.bias", "blocks.0.mixer.q.bias", "blocks.0.mixer_norm.weight", "norm.weight"]
    assert len(decayed["params"]) + len(spared["params"]) == len(list(model.parameters()))
    [whole] = optim.decay_groups(model, 0.0)  # one group, as checkpoints from before the split hold
    assert len(whole["params"]) == len(list(model.parameters()))


def test_bf16_autocast_trains_a_step_on_cpu_close_to_fp32(llama):
    tokens = torch.randint(96, (2, 17), generator=torch.Generator().manual_seed(9))
    losses, grads = {}, {}
    for precision in ("fp32", "bf16"):
        model = lora_mod.apply_lora(hf_weights.load_pretrained(llama), EVERY, seed=1)
        with torch.no_grad():
            for _, b in lora_mod.adapters(model).values():
                b.fill_(0.01)  # nonzero B, so A gets a gradient too
        with optim.autocast(precision, torch.device("cpu")):
            logits = model(tokens[:, :-1], torch.arange(16))
        assert logits.dtype == (torch.bfloat16 if precision == "bf16" else torch.float32)
        loss = F.cross_entropy(logits.flatten(0, 1).float(), tokens[:, 1:].flatten())
        loss.backward()
        losses[precision] = loss.item()
        grads[precision] = torch.cat([p.grad.flatten() for p in model.parameters() if p.requires_grad])
        assert all(p.dtype == torch.float32 for p in model.parameters())  # weights and grads stay float32
    assert math.isfinite(losses["bf16"]) and abs(losses["bf16"] - losses["fp32"]) < 0.02 * losses["fp32"]
    assert torch.nn.functional.cosine_similarity(grads["bf16"], grads["fp32"], dim=0) > 0.99
    with optim.autocast("auto", torch.device("cpu")):  # auto on CPU: fp32
        assert not torch.is_autocast_enabled("cpu")
