"""Pre-tokenized shards: ``.npy`` arrays or raw ``.bin`` files of uint16/uint32 token ids.

``spec.data.path`` names one shard or a directory of them (name order), local or an
``s3://`` URI; shards on an object store are copied once per machine into the data cache
and memory-mapped from there. A document ends at the model's EOS token (when the job
names ``spec.model.from``) and at the end of each shard; without an EOS each shard is one
document, which packing cuts into sample-sized pieces.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import uuid

import numpy as np

from .datafiles import DataError, cache_root, listing
from .packing import Documents
from .storage import filesystem, is_url


def _local(file: str, size: int, version: str) -> str:
    """A local path of ``file``: itself, or its copy in the data cache."""
    if not is_url(file):
        return file.removeprefix("file://")
    copy = cache_root() / "shards" / hashlib.sha256(json.dumps([file, size, version]).encode()).hexdigest()[:24]
    copy.parent.mkdir(parents=True, exist_ok=True)
    with open(f"{copy}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not copy.is_file():
            fs, path = filesystem(file)
            partial = f"{copy}.{uuid.uuid4().hex[:8]}.partial"
            fs.get_file(path, partial)
            os.replace(partial, copy)
    return str(copy)


def _open(file: str, local: str, dtype: str) -> np.ndarray:
    if file.endswith(".npy"):
        arr = np.load(local, mmap_mode="r")
        if arr.ndim != 1 or arr.dtype.kind not in "iu":
            raise DataError("spec.data.path", f"{file} holds a {arr.dtype} array of shape {arr.shape}; "
                            "a shard is a flat array of integer token ids")
        return arr
    if os.path.getsize(local) % np.dtype(dtype).itemsize:
        raise DataError("spec.data.dtype", f"{file} is not a whole number of {dtype} tokens")
    return np.memmap(local, dtype=dtype, mode="r")


def shards(path: str, dtype: str, eos: int | None, where: str = "spec.data.path") -> Documents:
    """The documents of every shard under ``path``."""
    chunks, chunk, start, length = [], [], [], []
    for file, size, version in listing(path, "tokens", where):
        if not size:
            continue
        arr = _open(file, _local(file, size, version), dtype)
        ends = (np.flatnonzero(arr == eos) + 1) if eos is not None else np.zeros(0, dtype=np.int64)
        if not len(ends) or ends[-1] != len(arr):
            ends = np.append(ends, len(arr))
        starts = np.concatenate([[0], ends[:-1]])
        chunk.append(np.full(len(ends), len(chunks), dtype=np.int64))
        start.append(starts)
        length.append(ends - starts)
        chunks.append(arr)
    return Documents(tuple(chunks), *(np.concatenate(a).astype(np.int64) for a in (chunk, start, length)))
