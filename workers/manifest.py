"""The on-disk layout of committed checkpoints. Standard library only: the operator reads it.

    step-00000040/            committed: DCP shards + .metadata + manifest.json
    step-00000080.incomplete/ being written (or left by a crash): never loaded
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

MANIFEST = "manifest.json"
INCOMPLETE = ".incomplete"


def step_dir(root: str | Path, step: int) -> Path:
    return Path(root) / f"step-{step:08d}"


def committed(root: str | Path) -> list[dict[str, Any]]:
    """Manifests of committed checkpoints under ``root``, oldest first (``path`` added)."""
    out = []
    for path in Path(root).glob("step-*"):
        if path.name.endswith(INCOMPLETE) or not (path / MANIFEST).is_file():
            continue
        try:
            manifest = json.loads((path / MANIFEST).read_text())
        except (OSError, ValueError):
            continue
        out.append({**manifest, "path": str(path)})
    return sorted(out, key=lambda m: m["step"])
