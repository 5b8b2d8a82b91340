"""Sharded checkpoints with torch.distributed.checkpoint (DCP), committed atomically.

Every rank writes its shards into ``.incomplete``; DCP's save returns on the coordinator
only after all ranks finished, then rank 0 writes ``manifest.json`` and renames the folder.
A checkpoint without a manifest is not committed (layout in ``manifest.py``). DCP
reshards at load, so a checkpoint written at one world size loads at another.
"""

from __future__ import annotations

import datetime
import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

from .config import CheckpointConfig
from .manifest import INCOMPLETE, MANIFEST, committed, step_dir

class Checkpointer:
    """Saves and loads one generation's training state; collective on every rank."""

    def __init__(self, cfg: CheckpointConfig, *, layout: str, generation: int) -> None:
        self.cfg = cfg
        self.root = Path(cfg.dir)
        self.layout = layout
        self.generation = generation
        self.rank = dist.get_rank()
        self.world_size = dist.get_world_size()
        if self.rank == 0:
            self.root.mkdir(parents=True, exist_ok=True)
            for stale in self.root.glob(f"step-*{INCOMPLETE}"):
                shutil.rmtree(stale, ignore_errors=True)
        dist.barrier()

    def due(self, step: int, total: int) -> bool:
        return step % self.cfg.interval_steps == 0 or step == total

    def save(self, step: int, model: nn.Module, optimizer, *, data_position: int) -> dict[str, Any]:
        """Write and commit the state after ``step`` steps; returns the manifest."""
        final = step_dir(self.root, step)
        partial = final.with_name(final.name + INCOMPLETE)
        model_sd, optim_sd = get_state_dict(model, optimizer)
        dcp.save({"model": model_sd, "optim": optim_sd}, checkpoint_id=partial)
        manifest = {
            "step": step,
            "worldSize": self.world_size,
            "layout": self.layout,
            "generation": self.generation,
            "dataPosition": data_position,
            "time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        }
        if self.rank == 0:
            (partial / MANIFEST).write_text(json.dumps(manifest, indent=1))
            if final.exists():
                shutil.rmtree(final)
            os.replace(partial, final)
            self._prune()
        return {**manifest, "path": str(final)}

    def load(self, path: str | Path, model: nn.Module, optimizer) -> dict[str, Any]:
        """Load a committed checkpoint into ``model`` and ``optimizer``; returns its manifest."""
        path = Path(path)
        manifest = json.loads((path / MANIFEST).read_text())
        model_sd, optim_sd = get_state_dict(model, optimizer)
        state = {"model": model_sd, "optim": optim_sd}
        dcp.load(state, checkpoint_id=path)
        set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])
        return {**manifest, "path": str(path)}

    def _prune(self) -> None:
        for old in committed(self.root)[: -self.cfg.keep]:
            shutil.rmtree(old["path"], ignore_errors=True)
