"""The real peer: tiny Llama-family models built and saved by ``transformers`` itself.

``transformers`` imports the ``kernels`` distribution (Hugging Face's hub kernels), and the
repository root, which pytest puts on ``sys.path``, has a ``kernels/`` folder of its own
(``shardwright.kernels``'s source). ``import_transformers`` hides the root while
transformers resolves that name, so it gets the distribution, not our folder.
"""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path
from types import ModuleType

import torch

ROOT = Path(__file__).resolve().parents[2]
#: Small enough to run in milliseconds, with GQA (4 query heads share 2 KV heads).
TINY = {
    "vocab_size": 96, "hidden_size": 32, "intermediate_size": 48, "num_hidden_layers": 2,
    "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 256,
}


def import_transformers() -> ModuleType:
    saved = sys.path[:]
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT]
    shadow = sys.modules.pop("kernels", None) if _is_ours(sys.modules.get("kernels")) else None
    try:
        transformers = importlib.import_module("transformers")
        transformers.AutoModelForCausalLM  # noqa: B018 - resolves the lazy imports, hub kernels included
        importlib.import_module("transformers.integrations.hub_kernels")
        return transformers
    finally:
        sys.path[:] = saved
        if shadow is not None:
            sys.modules.setdefault("kernels", shadow)


def _is_ours(module: ModuleType | None) -> bool:
    return module is not None and Path(getattr(module, "__file__", "") or "").resolve().is_relative_to(ROOT)


def randomize(model: torch.nn.Module, *, seed: int = 0, std: float = 0.2) -> None:
    """Every parameter drawn at random, norms and biases included, so a mapping that drops
    or misplaces any tensor shows in the logits (default init zeros biases, ones norms).
    Norm scales stay near 1, as in trained models."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen, dtype=p.dtype) * std
            p.copy_(1 + noise if name.endswith("norm.weight") else noise)


def save_peer(
    transformers: ModuleType, config_class: str, path: Path, *, seed: int = 0, dtype: torch.dtype = torch.float32,
    max_shard_size: str | None = None, **config,
) -> Path:
    """A random ``config_class`` model saved with ``save_pretrained`` at ``path``."""
    cfg = getattr(transformers, config_class)(**(TINY | config))
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    randomize(model, seed=seed)
    model.to(dtype).save_pretrained(path, **({"max_shard_size": max_shard_size} if max_shard_size else {}))
    return path


def load_peer(transformers: ModuleType, path: Path, dtype: torch.dtype = torch.float32):
    return transformers.AutoModelForCausalLM.from_pretrained(path, dtype=dtype, attn_implementation="eager").eval()


#: Local text a test tokenizer is trained on (no tokenizer can be downloaded here).
TEXT = (
    "the quick brown fox jumps over the lazy dog", "a model trained here is served there",
    "shards of text make a corpus", "every rank reads its own part of the stream",
) * 20


def save_tokenizer(path: Path, vocab_size: int = TINY["vocab_size"]) -> Path:
    """A BPE ``tokenizer.json`` trained by ``tokenizers`` on ``TEXT`` at ``path`` (a model
    directory), Llama-like: ``<unk>`` 0, ``<s>`` 1 (added before every text), ``</s>`` 2;
    with the ``tokenizer_config.json`` transformers' ``AutoTokenizer`` reads."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
    tokenizer.decoder = decoders.Metaspace()
    tokenizer.train_from_iterator(TEXT, trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<unk>", "<s>", "</s>"]))
    tokenizer.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    path.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(path / "tokenizer.json"))
    (path / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>",
    }))
    return path
