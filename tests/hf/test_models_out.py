"""Models out: the built-in transformer, or a committed checkpoint the trainer wrote, exported
to the Hugging Face layout loads in transformers with the same logits and greedy tokens."""

from __future__ import annotations

import json
import shutil

import pytest
import yaml
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel

from shardwright.operator import cli
from shardwright.workers.checkpoint import Checkpointer
from shardwright.workers.config import CheckpointConfig, ModelConfig, RopeScaling
from shardwright.workers.hf import export as hf_export
from shardwright.workers.hf import weights as hf_weights
from shardwright.workers.model import Transformer
from shardwright.workers.serve.config import EngineConfig, ServeConfig
from shardwright.workers.serve.engine import Engine
from shardwright.workers.serve.request import SamplingParams
from shardwright.workers.serve.weights import build_model, find_checkpoint
from tests.support.manifests import edited

from .peer import import_transformers, load_peer, randomize, save_peer

LLAMA3 = RopeScaling(type="llama3", factor=8.0, original_max_positions=512)
CONFIGS = {
    "llama": dict(rope_theta=500000.0, rope_scaling=LLAMA3),
    "llama-tied-biased": dict(tie_embeddings=True, qkv_bias=True, out_bias=True),
    "qwen2": dict(tie_embeddings=True, qkv_bias=True, norm_eps=1e-6),
}


def _config(**extra) -> ModelConfig:
    return ModelConfig(vocab_size=96, dim=32, layers=2, heads=4, kv_heads=2, ffn_dim=48, layer_kinds=("softmax",) * 2, **extra)


@pytest.fixture(scope="module")
def transformers():
    return import_transformers()


@pytest.mark.parametrize("variant", CONFIGS)
def test_an_exported_model_gives_transformers_the_same_logits(transformers, tmp_path, variant):
    ours = Transformer(_config(**CONFIGS[variant])).eval()
    randomize(ours)
    out = hf_export.export_model(ours, tmp_path / "hf")
    peer = load_peer(transformers, out)
    assert type(peer).__name__ == ("Qwen2ForCausalLM" if variant == "qwen2" else "LlamaForCausalLM")
    tokens = torch.randint(96, (2, 29), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        torch.testing.assert_close(peer(tokens).logits, ours(tokens, torch.arange(29)), atol=1e-5, rtol=0)
    back = hf_weights.load_pretrained(out).state_dict()  # and the round trip is exact
    assert back.keys() == ours.state_dict().keys()
    assert all(torch.equal(back[k], v) for k, v in ours.state_dict().items())


def test_large_models_are_sharded_with_an_index(transformers, tmp_path):
    ours = Transformer(_config()).eval()
    randomize(ours)
    out = hf_export.export_model(ours, tmp_path / "hf", max_shard_bytes=40_000)
    index = json.loads((out / hf_weights.INDEX).read_text())
    assert len(set(index["weight_map"].values())) > 2 and not (out / hf_weights.SINGLE).exists()
    tokens = torch.randint(96, (1, 9), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        torch.testing.assert_close(load_peer(transformers, out)(tokens).logits, ours(tokens, torch.arange(9)), atol=1e-5, rtol=0)


def test_tokenizer_files_and_token_ids_travel_with_the_export(transformers, tmp_path):
    source = save_peer(transformers, "LlamaConfig", tmp_path / "src", bos_token_id=1, eos_token_id=2)
    (source / "tokenizer.json").write_text("{}")  # copied as is: this test reads no tokenizer
    out = hf_export.export_model(hf_weights.load_pretrained(source), tmp_path / "out")  # tokenizer from cfg.source
    assert (out / "tokenizer.json").read_text() == "{}"
    config = json.loads((out / "config.json").read_text())
    assert (config["bos_token_id"], config["eos_token_id"]) == (1, 2)


def test_models_with_linear_attention_are_refused(tmp_path):
    cfg = _config().model_copy(update={"layer_kinds": ("softmax", "gated-delta")})
    with pytest.raises(ValueError, match=r"only softmax-attention models export .* \['gated-delta', 'softmax'\]"):
        hf_export.export_state({}, cfg, tmp_path / "hf")
    assert not (tmp_path / "hf").exists()


# ----------------------------------------------------------------------------- a trainer's checkpoint


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A Qwen2-shaped model after one DDP step, checkpointed as train.py does, in a one-rank
    gloo group of this process (loading from other world sizes: tests/serving/test_weights.py)."""
    root = tmp_path_factory.mktemp("ckpt")
    cfg = _config(**CONFIGS["qwen2"])
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        model = Transformer(cfg)
        randomize(model, std=0.3)  # wide enough that the next token depends on the context
        model = DistributedDataParallel(model)
        optimizer = torch.optim.AdamW(model.parameters(), lr=0.05)
        seq = torch.randint(cfg.vocab_size, (2, 17), generator=torch.Generator().manual_seed(0))
        F.cross_entropy(model(seq[:, :-1], torch.arange(16)).flatten(0, 1), seq[:, 1:].flatten()).backward()
        optimizer.step()
        checkpointer = Checkpointer(CheckpointConfig(dir=str(root), async_save=False), layout="dp=1,sp=1", generation=1)
        checkpointer.save(1, model, optimizer, data_position=2)
        # DDP's reducer holds the process group: freed after destroy_process_group, its
        # gloo group's destructor may wait forever on its worker threads (seen in CI).
        del model, optimizer
    finally:
        dist.destroy_process_group()
    return root, cfg


def test_an_exported_checkpoint_generates_the_serving_engines_greedy_tokens(transformers, trained, tmp_path):
    """Its export, loaded by transformers, decodes greedily the tokens the built-in serving
    engine decodes from the checkpoint."""
    root, cfg = trained
    manifest = hf_export.export_checkpoint(root, cfg, tmp_path / "hf")
    assert manifest["step"] == 1 and manifest["path"] == find_checkpoint(root)["path"]

    engine = Engine.from_config(ServeConfig(
        model=cfg, checkpoint=manifest["path"], dtype="float64",
        engine=EngineConfig(block_size=4, num_blocks=32, max_model_len=64),
    ))
    peer = load_peer(transformers, tmp_path / "hf", dtype=torch.float64)
    outputs = []
    for prompt in ([3, 1, 4, 1, 5, 9, 2, 6], [7, 7, 7], [42]):
        ours = engine.generate([prompt], SamplingParams(max_tokens=12))[0]
        with torch.no_grad():
            theirs = peer.generate(torch.tensor([prompt]), max_new_tokens=12, do_sample=False)[0, len(prompt):].tolist()
        assert ours == theirs
        outputs.append(ours)
    assert len({tuple(o) for o in outputs}) == 3  # the prompt matters: not one token everywhere


def test_shardwright_export_writes_a_jobs_checkpoint(transformers, trained, tmp_path, capsys):
    """``shardwright export JOB.yaml --workdir W -o DIR``: the job's model from a HF directory,
    its checkpoints under W/checkpoints; the export carries the source's token ids."""
    root, cfg = trained
    source = hf_export.export_model(Transformer(cfg), tmp_path / "source")  # the job's spec.model.from
    config = json.loads((source / "config.json").read_text())
    (source / "config.json").write_text(json.dumps(config | {"eos_token_id": 5}))
    workdir = tmp_path / "run"
    shutil.copytree(root, workdir / "checkpoints")
    job = edited({"spec.model": {"from": str(source)}})
    (workdir / "job.yaml").write_text(yaml.safe_dump(job))

    args = ["export", str(workdir / "job.yaml"), "--workdir", str(workdir), "-o", str(tmp_path / "out"), "--format", "hf"]
    assert cli.main(args) == 0
    assert json.loads((tmp_path / "out" / "config.json").read_text())["eos_token_id"] == 5
    reference = build_model(cfg, seed=0, checkpoint=str(root))
    tokens = torch.randint(96, (1, 11), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        theirs = load_peer(transformers, tmp_path / "out")(tokens).logits
        torch.testing.assert_close(theirs, reference(tokens, torch.arange(11)), atol=1e-5, rtol=0)

    capsys.readouterr()
    assert cli.main([*args, "--step", "7"]) == 1
    assert capsys.readouterr().err == f"{workdir / 'job.yaml'}: no committed checkpoint at step 7 under {workdir / 'checkpoints'} (committed steps: 1)\n"
