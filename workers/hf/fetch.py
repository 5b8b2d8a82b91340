"""A Hugging Face directory on an object store (``s3://bucket/prefix``) copied to a local cache.

``spec.model.from`` and a ServingPool's ``model.from`` may name a URI; a rank or a serving
replica reads it here once when it starts, and everything after (``config.read_config``,
``weights.load_weights``, the tokenizer) reads the local copy.

The cache folder is named for the URI and for what the store lists under it (every file's
name, size and ETag), so a model exported again to the same URI is fetched again, and an
unchanged one is read from disk. The first rank of a machine downloads under a file lock
while the others wait and then read its copy; the copy is written under a name of its own
and renamed into place when whole, so a reader never sees half a directory and a crash
leaves nothing that looks complete. Credentials and endpoint come from the process's AWS
environment, as for checkpoints (``workers/storage.py``).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import tempfile
import uuid
from pathlib import Path

from ..config import ModelConfig
from ..storage import filesystem, is_url, name_of
from . import config as hf_config

#: Where fetched directories live unless the caller names a folder: the machine's temporary
#: directory (a pod's own disk), shared by the ranks of one machine.
DEFAULT_CACHE = Path(tempfile.gettempdir()) / "shardwright-models"


def fetch(uri: str, cache: str | Path = DEFAULT_CACHE) -> Path:
    """The local copy of the Hugging Face directory at ``uri``, downloaded unless cached."""
    fs, root = filesystem(uri)
    listing = _listing(fs, root, uri)
    key = hashlib.sha256(json.dumps([uri.rstrip("/"), listing]).encode()).hexdigest()[:20]
    final = Path(cache) / key
    if (final / hf_config.CONFIG).is_file():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    with open(final.with_name(f"{key}.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one download per machine: the other ranks wait, then find it
        if not (final / hf_config.CONFIG).is_file():
            _download(fs, root, uri, listing, final)
    return final


def _download(fs, root: str, uri: str, listing: list[tuple[str, int, str]], final: Path) -> None:
    """Every listed file into a folder of its own, checked, then renamed to ``final``."""
    partial = final.with_name(f"{final.name}.{uuid.uuid4().hex[:8]}.partial")
    partial.mkdir()
    try:
        for name, size, _ in listing:
            fs.get_file(f"{root.rstrip('/')}/{name}", str(partial / name))
            if (got := (partial / name).stat().st_size) != size:
                raise OSError(f"{uri}/{name}: fetched {got} bytes, the store lists {size}")
        if _listing(fs, root, uri) != listing:  # re-exported while we read: a mix of two models
            raise OSError(f"{uri} changed while it was fetched; start again")
        os.replace(partial, final)
    finally:
        shutil.rmtree(partial, ignore_errors=True)


def localize(cfg: ModelConfig, cache: str | Path = DEFAULT_CACHE) -> ModelConfig:
    """``cfg`` as it is, or, when it has a ``source``, that directory's config.json read here at
    start: a URI's fetched copy (``source`` then names it), or a path, which admission in a
    cluster does not read (the operator mounts no rank volume: operator/api/localpaths.py)."""
    if cfg.source is None:
        return cfg
    return hf_config.read_config(fetch(cfg.source, cache) if is_url(cfg.source) else cfg.source)


def _listing(fs, root: str, uri: str) -> list[tuple[str, int, str]]:
    """Name, size and ETag (or modification time) of every file directly under ``root``."""
    try:
        entries = fs.ls(root, detail=True)
    except FileNotFoundError:
        entries = []
    files = sorted((name_of(e["name"]), int(e["size"]), str(e.get("ETag") or e.get("mtime") or ""))
                   for e in entries if e["type"] == "file")
    if hf_config.CONFIG not in {name for name, _, _ in files}:
        raise FileNotFoundError(f"{uri} is not a Hugging Face model directory: no {hf_config.CONFIG}")
    return files
