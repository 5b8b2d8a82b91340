"""A Hugging Face model loaded into the built-in transformer runs its sequence-parallel
attention kernels unchanged: each rank's logits for its shard of the sequence equal
transformers' logits for the whole sequence at those positions."""

from __future__ import annotations

import pytest
import torch

from shardwright.workers.config import sequence_layout
from shardwright.workers.hf import weights as hf_weights
from shardwright.workers.mixers import SequenceContext

from .peer import import_transformers, load_peer, save_peer

T = 24  # divisible by 2P for P = 2: every layout works


def _sharded_error(path: str, tokens: torch.Tensor, expected: torch.Tensor, kind: str) -> float:
    """On every rank: its shard's logits against the same positions of ``expected``."""
    from shardwright.kernels import comm

    ctx = SequenceContext(group=None, degree=comm.world_size(), kind=kind)
    assert ctx.layout == sequence_layout(kind)
    model = hf_weights.load_pretrained(path, ctx).eval()
    with torch.no_grad():
        got = model(ctx.shard(tokens, 1), ctx.shard(torch.arange(T), 0))
    return (got - ctx.shard(expected, 1)).abs().max().item()


@pytest.fixture(scope="module")
def qwen2(tmp_path_factory):
    """Qwen2-shaped (q/k/v biases, tied embeddings) with llama3-scaled rotary frequencies:
    every mapped feature at once."""
    transformers = import_transformers()
    path = save_peer(transformers, "Qwen2Config", tmp_path_factory.mktemp("hf") / "qwen2", tie_word_embeddings=True,
                     rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
                                      "high_freq_factor": 4.0, "original_max_position_embeddings": 512})
    tokens = torch.randint(96, (2, T), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        expected = load_peer(transformers, path)(tokens).logits
    return str(path), tokens, expected


@pytest.mark.parametrize("kind", ["zigzag", "ring", "ulysses", "tokenring"])
def test_sharded_logits_equal_transformers(dist_pool, qwen2, kind):
    errors = dist_pool(2).run(_sharded_error, *qwen2, kind)
    assert max(errors) < 1e-5
