"""The files a data path names, local or on an object store, and the checks admission can make.

``spec.data.path`` (and ``spec.data.validation.path``) is one file or a directory of files
of the source's kinds (its direct entries, in name order), as a local path or an
``s3://bucket/prefix`` URI. Standard library only at import: the operator checks local
paths at admission through :func:`problems`; fsspec and pyarrow load when they are used.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

from .storage import filesystem, is_url

#: File kinds each source reads.
SUFFIXES = {"text": (".jsonl", ".parquet"), "tokens": (".npy", ".bin")}


class DataError(ValueError):
    """Bad data, named by the spec field to change (``spec.data.path``, ``spec.data.field``...)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field, self.message = field, message


def listing(path: str, source: str, field: str = "spec.data.path") -> list[tuple[str, int, str]]:
    """``(file, size, version)`` of every data file ``path`` names, in name order; the version
    (mtime or ETag) lets a cache tell an edited file from the one it read."""
    kinds = SUFFIXES[source]
    allowed = f"source {source} reads {' or '.join(kinds)} files or a directory of them"
    if is_url(path):
        fs, root = filesystem(path)
        try:
            info = fs.info(root)
            entries = [info] if info["type"] == "file" else fs.ls(root, detail=True)
        except FileNotFoundError:
            raise DataError(field, f"{path} does not exist") from None
        scheme = path.split("://", 1)[0]
        found = [(f"{scheme}://{e['name']}", int(e["size"]), str(e.get("ETag") or e.get("mtime") or ""))
                 for e in entries if e["type"] == "file"]
        is_file = info["type"] == "file"
    else:
        p = Path(path.removeprefix("file://"))
        if not p.exists():
            raise DataError(field, f"{path} does not exist")
        is_file = p.is_file()
        entries = [p] if is_file else [e for e in p.iterdir() if e.is_file()]
        found = [(str(e), (st := e.stat()).st_size, str(st.st_mtime_ns)) for e in entries]
    if is_file and not found[0][0].endswith(kinds):
        raise DataError(field, f"{path} is not a {' or '.join(kinds)} file; {allowed}")
    files = sorted(f for f in found if f[0].endswith(kinds))
    if not files:
        raise DataError(field, f"{path} holds no {' or '.join(kinds)} files; {allowed}")
    if not any(size for _, size, _ in files):
        raise DataError(field, f"{path} is empty: its files hold no data")
    return files


def first_record_keys(file: str) -> list[str] | None:
    """The keys (JSONL) or columns (Parquet) of a local file's records; None if it has none."""
    if file.endswith(".parquet"):
        import pyarrow.parquet as pq

        return pq.read_schema(file).names
    with open(file, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                record = json.loads(line)
                return list(record) if isinstance(record, dict) else []
    return None


def problems(source: str, path: str | None, text_field: str, validation_path: str | None) -> Iterator[tuple[str, str]]:
    """``(spec field, message)`` for what admission can see of local data paths (URIs are
    read by the ranks when they start, with the same words)."""
    for field, where in (("spec.data.path", path), ("spec.data.validation.path", validation_path)):
        if where is None or is_url(where):
            continue
        try:
            files = listing(where, source, field)
            if source == "text":
                keys = next((k for f, size, _ in files if size and (k := first_record_keys(f)) is not None), None)
                if keys is not None and text_field not in keys:
                    yield "spec.data.field", f"{text_field!r} is not in the records of {where} (they hold {sorted(keys)})"
        except DataError as e:
            yield e.field, e.message
        except (OSError, ValueError) as e:  # unreadable, or a JSONL line that is no JSON
            yield field, f"{where} cannot be read: {e}"


def cache_root() -> Path:
    """Where ranks keep tokenized data: ``$SHARDWRIGHT_DATA_CACHE`` or the machine's temp dir."""
    import tempfile

    return Path(os.environ.get("SHARDWRIGHT_DATA_CACHE") or Path(tempfile.gettempdir()) / "shardwright-data")
