"""A replica serves the weights a TrainingJob checkpointed (any world size), or refuses a damaged checkpoint."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel

from shardwright.workers.checkpoint import Checkpointer, damage
from shardwright.workers.config import CheckpointConfig, ModelConfig
from shardwright.workers.model import Transformer
from shardwright.workers.serve.config import EngineConfig, ServeConfig
from shardwright.workers.serve.engine import Engine
from shardwright.workers.serve.request import SamplingParams
from shardwright.workers.serve.weights import build_model, find_checkpoint

from .models import generate_alone, tiny_config


def _train_one_step_and_save(root: str, cfg_json: str) -> dict[str, torch.Tensor] | None:
    """On every rank of the pool: one DDP step of the transformer, then a checkpoint as train.py writes it."""
    cfg = ModelConfig.model_validate_json(cfg_json)
    torch.manual_seed(0)
    model = DistributedDataParallel(Transformer(cfg))
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.05)
    seq = torch.randint(cfg.vocab_size, (2, 17), generator=torch.Generator().manual_seed(dist.get_rank()))
    logits = model(seq[:, :-1], torch.arange(16))
    F.cross_entropy(logits.flatten(0, 1), seq[:, 1:].flatten()).backward()
    optimizer.step()
    checkpointer = Checkpointer(CheckpointConfig(dir=root, async_save=False), layout="dp=2,sp=1", generation=1)
    checkpointer.save(1, model, optimizer, data_position=4)
    return {k: v.detach().clone() for k, v in model.module.state_dict().items()} if dist.get_rank() == 0 else None


@pytest.fixture(scope="module")
def checkpoint(dist_pool, tmp_path_factory):
    root = tmp_path_factory.mktemp("ckpt")
    trained, _ = dist_pool(2).run(_train_one_step_and_save, str(root), tiny_config().model_dump_json())
    return root, trained


def test_a_two_rank_checkpoint_loads_whole_into_one_replica(checkpoint):
    root, trained = checkpoint
    model = build_model(tiny_config(), seed=123, checkpoint=str(root))  # the job's directory: newest step
    loaded = model.state_dict()
    assert loaded.keys() == trained.keys()
    assert all(torch.equal(loaded[k], trained[k]) for k in trained)
    seeded = build_model(tiny_config(), seed=0)
    assert not torch.equal(seeded.state_dict()["head.weight"], trained["head.weight"])  # training moved it


def test_a_replica_configured_with_the_checkpoint_generates_with_its_weights(checkpoint):
    root, _ = checkpoint
    step = find_checkpoint(root)["path"]
    config = ServeConfig(model=tiny_config(), checkpoint=step, dtype="float64", engine=EngineConfig(block_size=4, num_blocks=32, max_model_len=64))
    engine = Engine.from_config(config)
    reference = build_model(tiny_config(), seed=0, dtype="float64", checkpoint=step)
    prompt = [3, 1, 4, 1, 5, 9, 2, 6]
    assert engine.generate([prompt], SamplingParams(max_tokens=6)) == [generate_alone(reference, prompt, 6)]


def test_a_damaged_checkpoint_is_refused(checkpoint, tmp_path):
    root, _ = checkpoint
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(root, copy)
    damage(find_checkpoint(copy))
    with pytest.raises(ValueError, match=r"is damaged \(.* fails its CRC-32\); not serving it"):
        build_model(tiny_config(), seed=0, checkpoint=str(copy))
    with pytest.raises(FileNotFoundError, match="no committed checkpoint at or under"):
        build_model(tiny_config(), seed=0, checkpoint=str(tmp_path / "nothing"))
