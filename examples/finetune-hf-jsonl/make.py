"""Make what examples/finetune-hf-jsonl.yaml reads, here in this folder (docs/data.md):

- ``model/``: a tiny Llama-layout Hugging Face directory (random weights, written by
  ``shardwright``'s own exporter) with a byte-pair ``tokenizer.json`` trained on the text;
- ``train.jsonl`` and ``valid.jsonl``: one record ``{"text": ...}`` per paragraph of the
  project's docs/*.md, every tenth paragraph held out for validation.

    python examples/finetune-hf-jsonl/make.py
    shardwright run examples/finetune-hf-jsonl.yaml

With a real model, point ``spec.model.from`` at its directory and ``spec.data.path`` at your
JSONL or Parquet instead; nothing here is needed then.
"""

from __future__ import annotations

import json
from pathlib import Path

HERE = Path(__file__).resolve().parent
DOCS = HERE.parents[1] / "docs"
EOS = "</s>"


def paragraphs() -> list[str]:
    text = "\n\n".join(p.read_text() for p in sorted(DOCS.glob("*.md")))
    return [p.strip() for p in text.split("\n\n") if p.strip()]


def main() -> None:
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    from shardwright.workers.config import ModelConfig
    from shardwright.workers.hf.export import export_model
    from shardwright.workers.model import Transformer

    texts = paragraphs()
    for name, part in (("train.jsonl", [t for i, t in enumerate(texts) if i % 10]),
                       ("valid.jsonl", texts[::10])):
        (HERE / name).write_text("".join(json.dumps({"text": t}) + "\n" for t in part))

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.train_from_iterator(texts, trainers.BpeTrainer(
        vocab_size=512, special_tokens=[EOS], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    cfg = ModelConfig(vocab_size=512, dim=64, layers=2, heads=4, kv_heads=2, ffn_dim=160, layer_kinds=("softmax",) * 2)
    torch.manual_seed(0)
    model = export_model(Transformer(cfg), HERE / "model")
    tokenizer.save(str(model / "tokenizer.json"))
    (model / "tokenizer_config.json").write_text(json.dumps({"eos_token": EOS}))
    print(f"{len(texts)} paragraphs -> {HERE / 'train.jsonl'}, {HERE / 'valid.jsonl'}; model in {HERE / 'model'}")


if __name__ == "__main__":
    main()
