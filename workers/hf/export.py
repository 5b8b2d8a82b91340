"""Models out: a model or a committed training checkpoint -> a Hugging Face directory.

The directory is what ``transformers.AutoModelForCausalLM.from_pretrained`` (and vLLM,
SGLang) read: ``config.json``, safetensors (sharded above 5 GB, with an index) and, when
the model came from a Hugging Face directory, that directory's tokenizer files. It is
written under ``DIR.incomplete`` and renamed when whole, so a reader never sees half of it.

    python -m shardwright.workers.hf.export CHECKPOINT --config MODEL_CONFIG_JSON -o DIR

is how ``shardwright export`` runs it: the operator's command never imports torch itself.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

from .. import storage
from ..config import LoraConfig, ModelConfig
from ..lora import apply_lora, merged_state
from ..model import Transformer
from ..serve.weights import load_checkpoint
from .adapter import export_adapter
from . import config as hf_config
from . import fetch
from . import weights as hf_weights

#: Tensor types an export may be written in (``--dtype``); training checkpoints are float32.
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
#: Files copied from the source directory when present: the tokenizer in every format
#: transformers writes, and the generation defaults that go with it.
TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
    "vocab.json", "merges.txt", "added_tokens.json", "chat_template.jinja", "generation_config.json",
)


def export_model(
    model: Transformer, out: str | Path, *, tokenizer_from: str | Path | None = None, dtype: torch.dtype | None = None,
    max_shard_bytes: int = hf_weights.MAX_SHARD_BYTES,
) -> Path:
    """Write ``model`` as a Hugging Face directory at ``out``, LoRA adapters merged into their
    weights; tokenizer files from ``tokenizer_from`` (default: the directory the model was
    loaded from, if any)."""
    return export_state(
        merged_state(model), model.cfg, out, tokenizer_from=tokenizer_from, dtype=dtype, max_shard_bytes=max_shard_bytes,
    )


def export_state(
    state: dict[str, torch.Tensor], cfg: ModelConfig, out: str | Path, *, tokenizer_from: str | Path | None = None,
    dtype: torch.dtype | None = None, max_shard_bytes: int = hf_weights.MAX_SHARD_BYTES,
) -> Path:
    """As ``export_model``, from a ``Transformer`` state dict and its config."""
    hf = hf_config.to_hf(cfg)  # refuses what has no Hugging Face equivalent before writing anything
    tensors = hf_weights.to_hf_state(state, cfg)
    if dtype is not None:
        tensors = {k: v.to(dtype) for k, v in tensors.items()}
        hf["torch_dtype"] = str(dtype).removeprefix("torch.")
    final = Path(out)
    partial = final.with_name(final.name + ".incomplete")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    hf_weights.write_safetensors(tensors, partial, max_shard_bytes=max_shard_bytes)
    source = tokenizer_from or cfg.source
    if source is not None:
        for name in TOKENIZER_FILES:
            if (Path(source) / name).is_file():
                shutil.copy2(Path(source) / name, partial / name)
        hf = _keep_token_ids(hf, Path(source))
    (partial / hf_config.CONFIG).write_text(json.dumps(hf, indent=2))
    if final.exists():
        shutil.rmtree(final)
    os.replace(partial, final)
    return final


def export_to(
    model: Transformer, dest: str, *, tokenizer_from: str | Path | None = None, dtype: torch.dtype | None = None,
) -> str:
    """``export_model`` to a path or an object-store URI (``s3://bucket/prefix``); ``dest``.

    A store has no folder rename: the export is written locally, the old ``config.json`` is
    deleted first and the new one uploaded last, so the prefix is a model directory (to
    ``fetch``) only while it is whole."""
    if not storage.is_url(dest):
        return str(export_model(model, dest.removeprefix(storage.FILE_SCHEME), tokenizer_from=tokenizer_from, dtype=dtype))
    with tempfile.TemporaryDirectory(prefix="shardwright-export-") as tmp:
        local = export_model(model, Path(tmp) / "hf", tokenizer_from=tokenizer_from, dtype=dtype)
        store = storage.at(dest)
        store.remove(dest, first=hf_config.CONFIG)
        for file in sorted(local.iterdir(), key=lambda f: f.name == hf_config.CONFIG):
            with file.open("rb") as src, store.open(store.join(dest, file.name), "wb") as out:
                shutil.copyfileobj(src, out)
    return dest


def export_checkpoint(
    checkpoint: str | Path, cfg: ModelConfig, out: str | Path, *, tokenizer_from: str | Path | None = None,
    dtype: torch.dtype | None = None, lora: LoraConfig | None = None, adapter: bool = False,
) -> dict[str, Any]:
    """Export the model part of a committed DCP checkpoint (a ``step-N`` folder, or the newest
    under a job's checkpoint directory) after its manifest checks pass; the manifest. A LoRA
    job's (``lora``) is exported merged, or with ``adapter`` only its adapters, in PEFT's layout."""
    model = Transformer(cfg)
    if lora is not None:  # its checkpoints hold the adapters next to the frozen weights
        apply_lora(model, lora, seed=0)
    manifest = load_checkpoint(model, checkpoint)
    if adapter:
        if lora is None:
            raise ValueError("only a job with spec.training.lora has an adapter to export; export the whole model without --adapter")
        export_adapter(model, lora, out, dtype=dtype)
        return manifest
    export_to(model, str(out), tokenizer_from=tokenizer_from, dtype=dtype)
    return manifest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m shardwright.workers.hf.export")
    parser.add_argument("checkpoint", help="a committed step-N folder, or a checkpoint directory for its newest")
    parser.add_argument("--config", required=True, help="the job's ModelConfig as JSON")
    parser.add_argument("-o", "--out", required=True, help="the directory (or s3://bucket/prefix) to write, replaced if it exists")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="float32", help="tensor type of the safetensors")
    parser.add_argument("--lora", help="the job's LoraConfig as JSON, when it trains LoRA adapters")
    parser.add_argument("--adapter", action="store_true", help="write only the LoRA adapters, in PEFT's layout")
    args = parser.parse_args(argv)
    try:
        cfg = fetch.localize(ModelConfig.model_validate_json(args.config))  # a URI from: its config.json
        manifest = export_checkpoint(args.checkpoint, cfg, args.out, dtype=DTYPES[args.dtype],
                                     lora=LoraConfig.model_validate_json(args.lora) if args.lora else None, adapter=args.adapter)
    except (OSError, ValueError) as e:  # no checkpoint, a damaged one, or a model with no HF equivalent
        print(f"export: {e}", file=sys.stderr)
        return 1
    layout = "its LoRA adapter in PEFT's layout" if args.adapter else "in the Hugging Face layout"
    print(f"{args.out}: step {manifest['step']} of {manifest['path']}, {layout}")
    return 0


def _keep_token_ids(hf: dict[str, Any], source: Path) -> dict[str, Any]:
    """The source config's special token ids, so generation stops where the original did."""
    file = source / hf_config.CONFIG
    if not file.is_file():
        return hf
    original = json.loads(file.read_text())
    return hf | {k: original[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id") if k in original}


if __name__ == "__main__":
    sys.exit(main())
