"""Manifests for tests: the embedded example, and copies of it with fields changed or removed."""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "tiny-train.yaml"

#: Value that removes the field instead of setting it.
DROP = object()

_PART = re.compile(r"([^.\[\]]+)|\[(\d+)\]")


def example() -> dict[str, Any]:
    """A fresh copy of examples/tiny-train.yaml."""
    return yaml.safe_load(EXAMPLE.read_text())


def edited(edits: dict[str, Any], doc: dict[str, Any] | None = None) -> dict[str, Any]:
    """A copy of ``doc`` (the example by default) with ``{"spec.workers[0].replicas": 0}``
    style edits applied; missing mappings on the way are created, ``DROP`` deletes."""
    out = copy.deepcopy(example() if doc is None else doc)
    for path, value in edits.items():
        keys = [int(i) if i else name for name, i in _PART.findall(path)]
        node = out
        for key in keys[:-1]:
            if isinstance(key, str) and key not in node:
                node[key] = {}
            node = node[key]
        if value is DROP:
            del node[keys[-1]]
        else:
            node[keys[-1]] = copy.deepcopy(value)
    return out
