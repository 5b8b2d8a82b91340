"""The layout of committed checkpoints. Standard library only: the operator reads it.

    step-00000040/            committed: DCP shards + .metadata + manifest.json
    step-00000080.incomplete/ being written (or left by a crash): never loaded
    step-00000120/            on an object store, without manifest.json: being written
    step-00000030.corrupt/    failed its checksums at a load: set aside, never listed again

Only a folder named exactly ``step-NNNNNNNN`` with a ``manifest.json`` is committed, on a
filesystem and on an object store alike (``storage.py`` says how each commits).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from . import storage

MANIFEST = "manifest.json"
INCOMPLETE = ".incomplete"
CORRUPT = ".corrupt"
PREFIX = "step-"
_COMMITTABLE = re.compile(r"step-\d{8}")


def step_dir(root: str | Path, step: int) -> str:
    """The folder of step ``step``'s checkpoint under ``root`` (a path or a URL)."""
    store = storage.at(root)
    return store.join(store.root, f"{PREFIX}{step:08d}")


def committed(root: str | Path) -> list[dict[str, Any]]:
    """Manifests of committed checkpoints under ``root``, oldest first (``path`` added)."""
    store = storage.at(root)
    out = []
    for path in store.folders(PREFIX):
        if not _COMMITTABLE.fullmatch(storage.name_of(path)):  # .incomplete, .corrupt
            continue
        try:
            manifest = json.loads(store.read_bytes(store.join(path, MANIFEST)))
        except (OSError, ValueError):  # no manifest: not committed (missing is an OSError)
            continue
        out.append({**manifest, "path": path})
    return sorted(out, key=lambda m: m["step"])


def uncommitted(root: str | Path) -> list[str]:
    """Folders a crashed save left: ``.incomplete`` ones, and step folders without a
    manifest (an object store writes shards in place). Set-aside ``.corrupt`` ones stay."""
    store = storage.at(root)
    return [path for path in store.folders(PREFIX)
            if path.endswith(INCOMPLETE)
            or (_COMMITTABLE.fullmatch(storage.name_of(path)) and not store.is_file(store.join(path, MANIFEST)))]
