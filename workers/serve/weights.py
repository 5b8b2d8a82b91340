"""The served model's weights: drawn from a seed, loaded from a TrainingJob's checkpoint, or
from a Hugging Face directory (``model.from``, e.g. a TrainingJob's export).

A training checkpoint is a DCP folder written by every rank (``workers/checkpoint.py``) at
whatever world size the job had; DCP reshards at load, so one serving process reads it
whole, without a process group. Only the ``model`` part is read (the optimizer state is
left on disk), after the manifest's sizes and CRC-32s are verified, so a damaged checkpoint
is refused instead of served.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp

from ..checkpoint import verify
from ..config import ModelConfig
from ..manifest import MANIFEST, committed
from ..model import Transformer

DTYPES = {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16}


def build_model(cfg: ModelConfig, *, seed: int, dtype: str = "float32", device: str = "cpu", checkpoint: str | None = None) -> Transformer:
    """The built-in transformer in eval mode: weights from ``checkpoint`` if given, from the
    Hugging Face directory ``cfg.source`` (a path, or a URI fetched here) if set, else from ``seed``."""
    torch.manual_seed(seed)
    if cfg.source is not None:  # a ServingPool's model.from
        from ..hf import fetch, weights as hf_weights  # safetensors, only for models that name one

        cfg = fetch.localize(cfg)
        model = Transformer(cfg)
        hf_weights.load_weights(model, cfg.source)
    else:
        model = Transformer(cfg)
    if checkpoint is not None:
        load_checkpoint(model, checkpoint)  # in float32, as trained, before any cast
    return model.to(device=device, dtype=DTYPES[dtype]).eval()


def find_checkpoint(path: str | Path) -> dict[str, Any]:
    """The manifest of ``path`` (a committed ``step-N`` folder) or of the newest committed
    checkpoint under it (a job's checkpoint directory); ``path`` is added."""
    p = Path(path)
    if (p / MANIFEST).is_file():
        return json.loads((p / MANIFEST).read_text()) | {"path": str(p)}
    found = committed(p)
    if not found:
        raise FileNotFoundError(f"no committed checkpoint at or under {p} (a step-N folder with {MANIFEST})")
    return found[-1]


def load_checkpoint(model: Transformer, path: str | Path) -> dict[str, Any]:
    """Load the model weights of a committed training checkpoint into ``model``; its manifest."""
    manifest = find_checkpoint(path)
    problem = verify(manifest)
    if problem is not None:
        raise ValueError(f"checkpoint {manifest['path']} is damaged ({problem}); not serving it")
    state = {"model": model.state_dict()}
    stored = dcp.FileSystemReader(manifest["path"]).read_metadata().state_dict_metadata
    if any(".lora_a." in key for key in stored) and not any(".lora_a." in key for key in state["model"]):
        raise ValueError(f"checkpoint {manifest['path']} holds LoRA adapters (spec.training.lora) beside frozen weights; "
                         "serve the job's merged export instead (spec.export, or shardwright export --format hf) as model.from")
    with warnings.catch_warnings():  # DCP warns on every load without a process group: intended here
        warnings.filterwarnings("ignore", message="torch.distributed is disabled, unavailable or uninitialized")
        dcp.load(state, checkpoint_id=manifest["path"], no_dist=not dist.is_initialized())
    model.load_state_dict(state["model"])
    return manifest
