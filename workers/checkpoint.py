"""Sharded checkpoints with torch.distributed.checkpoint (DCP), committed atomically.

Every rank writes its shards into ``step-N.incomplete/``; DCP's save completes on the
coordinator only after all ranks finished, then rank 0 records every file's size and
CRC-32 in ``manifest.json`` and renames the folder to ``step-N/`` (layout in
``manifest.py``). A folder without a manifest is not committed and never loaded.

Asynchronous saves (DataStates-style): parameters and optimizer state do not change
until the next optimizer step, so ``save`` with ``async_save`` only copies them to host
memory (the stall) and a background thread writes and commits; the copy runs on a
dedicated gloo group so it never shares a communicator with training. At most one save
is in flight: the next one first waits for the previous commit.

Loading verifies the manifest's checksums first; a damaged checkpoint is renamed
``step-N.corrupt`` (so nothing lists it again) and the previous committed one is loaded
instead. DCP reshards at load, so a checkpoint written at one world size loads at another.
"""

from __future__ import annotations

import concurrent.futures
import datetime
import json
import os
import shutil
import zlib
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

from .config import CheckpointConfig
from .manifest import INCOMPLETE, MANIFEST, committed, step_dir

CORRUPT = ".corrupt"


class Checkpointer:
    """Saves and loads one generation's training state; collective on every rank."""

    def __init__(self, cfg: CheckpointConfig, *, layout: str, generation: int) -> None:
        self.cfg = cfg
        self.root = Path(cfg.dir)
        self.layout = layout
        self.generation = generation
        self.rank = dist.get_rank()
        self.world_size = dist.get_world_size()
        self._group = dist.new_group(backend="gloo") if cfg.async_save else None
        self._in_flight: concurrent.futures.Future | None = None
        self._committed: list[dict[str, Any]] = []
        if self.rank == 0:
            self.root.mkdir(parents=True, exist_ok=True)
            for stale in self.root.glob(f"step-*{INCOMPLETE}"):
                shutil.rmtree(stale, ignore_errors=True)
        dist.barrier()

    def due(self, step: int, total: int) -> bool:
        return step % self.cfg.interval_steps == 0 or step == total

    # ------------------------------------------------------------------ saving

    def save(self, step: int, model: nn.Module, optimizer, *, data_position: int) -> None:
        """Checkpoint the state after ``step`` steps (in the background when configured)."""
        self.wait()
        model_sd, optim_sd = get_state_dict(model, optimizer)
        state = {"model": model_sd, "optim": optim_sd}
        partial = step_dir(self.root, step).with_name(step_dir(self.root, step).name + INCOMPLETE)
        manifest = {
            "step": step, "worldSize": self.world_size, "layout": self.layout,
            "generation": self.generation, "dataPosition": data_position,
            **({"owner": self.cfg.owner} if self.cfg.owner else {}),
        }
        if self._group is None:
            dcp.save(state, checkpoint_id=partial)
            self._commit(partial, manifest)
            return
        written = dcp.async_save(state, checkpoint_id=partial, process_group=self._group)
        written = getattr(written, "upload_completion", written)  # AsyncSaveResponse in newer torch
        committed_ = concurrent.futures.Future()

        def commit(done: concurrent.futures.Future) -> None:
            # A future's result() may return before its callbacks ran: ``wait`` waits on this.
            try:
                done.result()
                self._commit(partial, manifest)
                committed_.set_result(None)
            except BaseException as e:  # noqa: BLE001 - re-raised by wait() on the main thread
                committed_.set_exception(e)

        written.add_done_callback(commit)
        self._in_flight = committed_

    def wait(self) -> None:
        """Block until the save in flight (if any) is written and committed."""
        if self._in_flight is not None:
            future, self._in_flight = self._in_flight, None
            future.result()

    def take_committed(self) -> list[dict[str, Any]]:
        """Manifests committed by this rank since the last call (rank 0 only commits)."""
        out, self._committed = self._committed, []
        return out

    def _commit(self, partial: Path, manifest: dict[str, Any]) -> None:
        if self.rank != 0:
            return
        manifest = {
            **manifest,
            "time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "files": {p.name: {"size": p.stat().st_size, "crc32": _crc32(p)} for p in sorted(partial.iterdir())},
        }
        (partial / MANIFEST).write_text(json.dumps(manifest, indent=1))
        final = partial.with_name(partial.name.removesuffix(INCOMPLETE))
        if final.exists():
            shutil.rmtree(final)
        os.replace(partial, final)
        for old in committed(self.root)[: -self.cfg.keep]:
            shutil.rmtree(old["path"], ignore_errors=True)
        self._committed.append({**manifest, "path": str(final)})

    # ------------------------------------------------------------------ loading

    def resume_point(self) -> str | None:
        """The checkpoint to load: the controller's choice, or with ``resume_newest`` the
        newest one this job committed in storage if that is newer (never one an earlier job
        of the same name left there). Every rank lists the same storage, and the previous
        generation has stopped (fenced), so they all name the same one."""
        chosen = self.cfg.resume_from
        found = [m for m in committed(self.root) if m.get("owner") == self.cfg.owner] if self.cfg.resume_newest else []
        if found:
            newest = found[-1]["path"]
            if chosen is None or _step_of(Path(newest)) > _step_of(Path(chosen)):
                return newest
        return chosen

    def load(self, path: str | Path, model: nn.Module, optimizer) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
        """Load ``path``, or the newest older committed checkpoint if it is damaged.

        Returns the manifest loaded and the checkpoints rejected on the way (step, reason).
        Every rank checks the same files; the ranks agree through one all-reduce. When every
        checkpoint at or before ``path`` is damaged (or already set aside as such by an earlier
        generation), the manifest is None: the caller starts from step 0 and reports what it
        rejected, so the controller remembers it instead of naming the same step again.
        """
        wanted = _step_of(Path(path))
        rejected = []
        for manifest in reversed([m for m in committed(self.root) if m["step"] <= wanted]):
            problem = verify(manifest)
            if _any_rank(problem is not None):
                rejected.append({"step": manifest["step"], "reason": problem or "damaged on another rank"})
                dist.barrier()
                if self.rank == 0:
                    os.replace(manifest["path"], manifest["path"] + CORRUPT)
                continue
            model_sd, optim_sd = get_state_dict(model, optimizer)
            state = {"model": model_sd, "optim": optim_sd}
            dcp.load(state, checkpoint_id=manifest["path"])
            set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])
            return manifest, rejected
        if not any(r["step"] == wanted for r in rejected):  # set aside by an earlier generation
            rejected.insert(0, {"step": wanted, "reason": "damaged: set aside by an earlier generation"})
        return None, rejected


def _step_of(path: Path) -> int:
    """The step of the checkpoint at ``path``: its manifest's, else its folder name's
    (``step-00000080``; a damaged one may already be set aside under another name)."""
    try:
        return json.loads((path / MANIFEST).read_text())["step"]
    except (OSError, ValueError, KeyError):
        return int(path.name.split("-")[-1].split(".")[0])


def verify(manifest: dict[str, Any]) -> str | None:
    """None if every file the manifest lists has its size and CRC-32; else what is wrong."""
    root = Path(manifest["path"])
    for name, expected in manifest.get("files", {}).items():
        path = root / name
        if not path.is_file():
            return f"{name} is missing"
        if path.stat().st_size != expected["size"]:
            return f"{name} has {path.stat().st_size} bytes, manifest says {expected['size']}"
        if _crc32(path) != expected["crc32"]:
            return f"{name} fails its CRC-32"
    return None


def damage(manifest: dict[str, Any]) -> str:
    """Flip bytes in the largest shard of a committed checkpoint (fault injection)."""
    shard = max((p for p in Path(manifest["path"]).iterdir() if p.name != MANIFEST), key=lambda p: p.stat().st_size)
    with shard.open("r+b") as f:
        f.seek(shard.stat().st_size // 2)
        chunk = f.read(16)
        f.seek(-len(chunk), os.SEEK_CUR)
        f.write(bytes(b ^ 0xFF for b in chunk))
    return shard.name


def _crc32(path: Path) -> int:
    crc = 0
    with path.open("rb") as f:
        while block := f.read(1 << 20):
            crc = zlib.crc32(block, crc)
    return crc


def _any_rank(flag: bool) -> bool:
    t = torch.tensor([float(flag)])
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())
