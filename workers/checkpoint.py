"""Sharded checkpoints with torch.distributed.checkpoint (DCP), committed atomically.

Every rank writes its shards into ``step-N.incomplete/``; DCP's save completes on the
coordinator only after all ranks finished, then rank 0 records every file's size and
CRC-32 in ``manifest.json`` and renames the folder to ``step-N/`` (layout in
``manifest.py``). A folder without a manifest is not committed and never loaded.

On an object store (``s3://bucket/prefix``, ``storage.py``) there is no atomic folder
rename: the shards go straight into ``step-N/`` through DCP's fsspec writer, and writing
``manifest.json`` last is the commit. Pruning deletes the manifest first, so a checkpoint
half deleted is never loaded.

Asynchronous saves (DataStates-style): parameters and optimizer state do not change
until the next optimizer step, so ``save`` with ``async_save`` only copies them to host
memory (the stall) and a background thread writes and commits; the copy runs on a
dedicated gloo group so it never shares a communicator with training. At most one save
is in flight: the next one first waits for the previous commit.

Loading verifies the manifest's checksums first; a damaged checkpoint is renamed
``step-N.corrupt`` (so nothing lists it again; on an object store its objects are copied
there, manifest first) and the previous committed one is loaded instead. DCP reshards at
load, so a checkpoint written at one world size loads at another.
"""

from __future__ import annotations

import concurrent.futures
import datetime
import json
import zlib
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

from . import storage
from .config import CheckpointConfig
from .manifest import CORRUPT, INCOMPLETE, MANIFEST, committed, step_dir, uncommitted


class Checkpointer:
    """Saves and loads one generation's training state; collective on every rank."""

    def __init__(self, cfg: CheckpointConfig, *, layout: str, generation: int) -> None:
        self.cfg = cfg
        self.root = cfg.dir
        self.store = storage.at(cfg.dir)
        self.layout = layout
        self.generation = generation
        self.rank = dist.get_rank()
        self.world_size = dist.get_world_size()
        self._group = dist.new_group(backend="gloo") if cfg.async_save else None
        self._in_flight: concurrent.futures.Future | None = None
        self._committed: list[dict[str, Any]] = []
        if self.rank == 0:
            self.store.makedirs()
            for stale in uncommitted(self.root):
                self.store.remove(stale, first=MANIFEST)
        dist.barrier()

    def due(self, step: int, total: int) -> bool:
        return step % self.cfg.interval_steps == 0 or step == total

    # ------------------------------------------------------------------ saving

    def save(self, step: int, model: nn.Module, optimizer, *, data_position: int, loss: float | None = None) -> None:
        """Checkpoint the state after ``step`` steps (in the background when configured).
        ``loss``: that step's global loss, kept in the manifest so a generation resumed
        there reports it before it trains a step (or when it has none left to train)."""
        self.wait()
        model_sd, optim_sd = get_state_dict(model, optimizer)
        state = {"model": model_sd, "optim": optim_sd}
        partial = step_dir(self.root, step) + (INCOMPLETE if self.store.atomic_rename else "")
        if not self.store.atomic_rename and self.rank == 0:
            # Written in place: an older step-N (another job's, an earlier run's) goes first.
            # No rank writes before rank 0 joins DCP's planning collective, so after this.
            self.store.remove(partial, first=MANIFEST)
        manifest = {
            "step": step, "worldSize": self.world_size, "layout": self.layout,
            "generation": self.generation, "dataPosition": data_position,
            **({"loss": loss} if loss is not None else {}),
            **({"owner": self.cfg.owner} if self.cfg.owner else {}),
        }
        if self._group is None:
            dcp.save(state, checkpoint_id=partial, storage_writer=_fsspec(self.store, partial, reading=False))
            self._commit(partial, manifest)
            return
        written = dcp.async_save(state, checkpoint_id=partial, storage_writer=_fsspec(self.store, partial, reading=False), process_group=self._group)
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

    def _commit(self, partial: str, manifest: dict[str, Any]) -> None:
        if self.rank != 0:
            return
        files = self.store.files(partial)
        manifest = {
            **manifest,
            "time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "files": {name: {"size": size, "crc32": _crc32(self.store, self.store.join(partial, name))}
                      for name, size in files.items()},
        }
        self.store.write_bytes(self.store.join(partial, MANIFEST), json.dumps(manifest, indent=1).encode())
        final = partial.removesuffix(INCOMPLETE)
        if final != partial:
            self.store.move(partial, final, first=MANIFEST)
        for old in committed(self.root)[: -self.cfg.keep]:
            self.store.remove(old["path"], first=MANIFEST)
        self._committed.append({**manifest, "path": final})

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
            if chosen is None or _step_of(newest) > _step_of(chosen):
                return newest
        return chosen

    def resume(self, model: nn.Module, optimizer) -> tuple[dict[str, Any] | None, int | None, list[dict[str, Any]]]:
        """Load the resume point, if any: the manifest loaded (None: nothing loaded), the step
        resumed from for ``/status`` (None: a fresh start; 0: every checkpoint was damaged, so
        from the start) and the checkpoints rejected on the way (see ``load``)."""
        if (path := self.resume_point()) is None:
            return None, None, []
        manifest, rejected = self.load(path, model, optimizer)
        return manifest, manifest["step"] if manifest else 0, rejected

    def load(self, path: str, model: nn.Module, optimizer) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
        """Load ``path``, or the newest older committed checkpoint if it is damaged.

        Returns the manifest loaded and the checkpoints rejected on the way (step, reason).
        Every rank checks the same files; the ranks agree through one all-reduce. When every
        checkpoint at or before ``path`` is damaged (or already set aside as such by an earlier
        generation), the manifest is None: the caller starts from step 0 and reports what it
        rejected, so the controller remembers it instead of naming the same step again.
        """
        wanted = _step_of(path)
        rejected = []
        for manifest in reversed([m for m in committed(self.root) if m["step"] <= wanted]):
            problem = verify(manifest)
            if _any_rank(problem is not None):
                rejected.append({"step": manifest["step"], "reason": problem or "damaged on another rank"})
                dist.barrier()
                if self.rank == 0:
                    self.store.move(manifest["path"], manifest["path"] + CORRUPT, first=MANIFEST)
                continue
            model_sd, optim_sd = get_state_dict(model, optimizer)
            state = {"model": model_sd, "optim": optim_sd}
            dcp.load(state, checkpoint_id=manifest["path"], storage_reader=_fsspec(self.store, manifest["path"], reading=True))
            set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])
            return manifest, rejected
        if not any(r["step"] == wanted for r in rejected):  # set aside by an earlier generation
            rejected.insert(0, {"step": wanted, "reason": "damaged: set aside by an earlier generation"})
        return None, rejected


def _fsspec(store: storage.Store, path: str, *, reading: bool):
    """DCP's fsspec reader or writer for an object store (writes without fsync: an upload
    is durable once it completes); None for a local folder, which DCP handles itself."""
    if store.atomic_rename:
        return None
    from torch.distributed.checkpoint._fsspec_filesystem import FsspecReader, FsspecWriter  # not re-exported in torch 2.13

    return FsspecReader(path) if reading else FsspecWriter(path, sync_files=False)


def _step_of(path: str) -> int:
    """The step of the checkpoint at ``path``: its manifest's, else its folder name's
    (``step-00000080``; a damaged one may already be set aside under another name)."""
    store = storage.at(path)
    try:
        return json.loads(store.read_bytes(store.join(path, MANIFEST)))["step"]
    except (OSError, ValueError, KeyError):
        return int(storage.name_of(path).split("-")[-1].split(".")[0])


def verify(manifest: dict[str, Any]) -> str | None:
    """None if every file the manifest lists has its size and CRC-32; else what is wrong."""
    store = storage.at(manifest["path"])
    found = store.files(manifest["path"])
    for name, expected in manifest.get("files", {}).items():
        if name not in found:
            return f"{name} is missing"
        if found[name] != expected["size"]:
            return f"{name} has {found[name]} bytes, manifest says {expected['size']}"
        if _crc32(store, store.join(manifest["path"], name)) != expected["crc32"]:
            return f"{name} fails its CRC-32"
    return None


def damage(manifest: dict[str, Any]) -> str:
    """Flip bytes in the middle of the largest shard of a committed checkpoint (fault
    injection); on an object store the object is written again with them flipped."""
    store = storage.at(manifest["path"])
    sizes = {name: size for name, size in store.files(manifest["path"]).items() if name != MANIFEST}
    name = max(sizes, key=sizes.__getitem__)
    path = store.join(manifest["path"], name)
    data = bytearray(store.read_bytes(path))
    middle = len(data) // 2
    data[middle:middle + 16] = bytes(b ^ 0xFF for b in data[middle:middle + 16])
    store.write_bytes(path, bytes(data))
    return name


def _crc32(store: storage.Store, path: str) -> int:
    crc = 0
    with store.open(path, "rb") as f:
        while block := f.read(1 << 20):
            crc = zlib.crc32(block, crc)
    return crc


def _any_rank(flag: bool) -> bool:
    t = torch.tensor([float(flag)])
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())
