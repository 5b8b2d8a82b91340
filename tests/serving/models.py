"""Tiny models and the one-at-a-time reference the engine's outputs are compared with."""

from __future__ import annotations

import torch

from shardwright.workers.config import ModelConfig
from shardwright.workers.model import Transformer
from shardwright.workers.serve.config import EngineConfig
from shardwright.workers.serve.engine import Engine
from shardwright.workers.serve.runner import ModelRunner
from shardwright.workers.serve.weights import build_model

VOCAB = 64


def tiny_config(*, heads: int = 4, kv_heads: int = 2, layers: int = 2, vocab: int = VOCAB) -> ModelConfig:
    return ModelConfig(vocab_size=vocab, dim=32, layers=layers, heads=heads, kv_heads=kv_heads, ffn_dim=64, layer_kinds=("softmax",) * layers)


def tiny_model(cfg: ModelConfig | None = None, *, seed: int = 0) -> Transformer:
    """float64 (so batching and chunking cannot flip an argmax by rounding), weights wide
    enough that the next token depends on the context (the default 0.02 gives near-flat logits)."""
    model = build_model(cfg or tiny_config(), seed=seed, dtype="float64")
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.copy_(torch.randn(p.shape, generator=gen, dtype=p.dtype) * 0.3)
    return model


def engine(model: Transformer, **engine_kw) -> Engine:
    config = EngineConfig(**({"block_size": 4, "num_blocks": 64, "max_num_batched_tokens": 16, "max_model_len": 96} | engine_kw))
    return Engine(ModelRunner(model, num_blocks=config.num_blocks, block_size=config.block_size), config)


@torch.no_grad()
def generate_alone(model: Transformer, prompt: list[int], max_tokens: int) -> list[int]:
    """Greedy decoding by running the whole sequence through ``Transformer.forward`` each step."""
    tokens = list(prompt)
    for _ in range(max_tokens):
        logits = model(torch.tensor([tokens]), torch.arange(len(tokens)))
        tokens.append(int(logits[0, -1].argmax()))
    return tokens[len(prompt):]


def prompts(lengths: list[int], *, seed: int = 1, vocab: int = VOCAB) -> list[list[int]]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randint(vocab, (n,), generator=gen).tolist() for n in lengths]


def slowed(eng: Engine, seconds: float) -> Engine:
    """A slow replica: every iteration sleeps ``seconds`` first (no timing is asserted on it)."""
    import time

    step = eng.step

    def slow_step():
        time.sleep(seconds)
        return step()

    eng.step = slow_step
    return eng
