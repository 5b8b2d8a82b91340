"""A small text corpus and a tokenizer trained on it by the ``tokenizers`` library itself.

Documents of varied length (some longer than a test's sample, one empty), lowercase words
only, so a byte-pair vocabulary of under 96 tokens (the tiny Llama's, tests/hf/peer.py)
covers them.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

WORDS = "the a model learns to pack documents into samples while every token keeps its place".split()
EOS = "</s>"


def texts(count: int = 40, seed: int = 0) -> list[str]:
    """``count`` documents of 0 to about 60 words; the fourth is empty."""
    rng = np.random.default_rng(seed)
    docs = [" ".join(rng.choice(WORDS, size=int(rng.integers(1, 60)))) for _ in range(count)]
    docs[3] = ""
    return docs


def save_tokenizer(model_dir: Path, vocab_size: int = 96) -> Path:
    """A BPE tokenizer trained on :func:`texts` saved as ``tokenizer.json`` in ``model_dir``,
    with ``</s>`` as its EOS in tokenizer_config.json."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<unk>", "<s>", EOS])
    tokenizer.train_from_iterator(texts(200, seed=1), trainer)
    model_dir.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(model_dir / "tokenizer.json"))
    (model_dir / "tokenizer_config.json").write_text(json.dumps({"eos_token": EOS}))
    return model_dir


def write_jsonl(path: Path, docs: list[str], field: str = "text") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps({field: t, "id": i}) + "\n" for i, t in enumerate(docs)))
    return path
