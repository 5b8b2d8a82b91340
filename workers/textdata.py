"""Text records (JSONL, Parquet) tokenized with the model's own tokenizer, once per machine.

Each record's ``spec.data.field`` is encoded by ``tokenizer.json`` of the ``spec.model.from``
directory (the ``tokenizers`` library: a rank imports no transformers), with the special
tokens its post-processor adds (a Llama BOS), and the tokenizer's EOS appended; empty
texts are skipped. The token stream is cached under :func:`datafiles.cache_root`, in a
folder named for the data files (name, size, mtime or ETag), the field and the tokenizer:
the first rank of a machine tokenizes under a file lock, the others wait and read its
result, and a restarted job reads the cache instead of tokenizing again.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from .datafiles import DataError, cache_root, listing
from .packing import Documents
from .storage import filesystem, is_url

TOKENIZER = "tokenizer.json"
#: Records encoded per call of the tokenizer's (multi-threaded) batch encoder.
BATCH = 1024
#: Bumped when the cached layout or the tokenization changes, so old caches are not read.
FORMAT = 1


def local_model(model_dir: str) -> Path:
    """The ``spec.model.from`` directory on this machine: itself, or its fetched copy."""
    if is_url(model_dir):
        from .hf.fetch import fetch

        return fetch(model_dir)
    return Path(model_dir)


def load_tokenizer(model_dir: str):
    """``(tokenizer, eos id)`` of a Hugging Face directory, local or a URI fetched once."""
    from tokenizers import Tokenizer

    local = local_model(model_dir)
    if not (local / TOKENIZER).is_file():
        raise DataError("spec.model.from", f"{model_dir} has no {TOKENIZER}; source text tokenizes with it")
    tokenizer = Tokenizer.from_file(str(local / TOKENIZER))
    eos = eos_id(local, tokenizer)
    if eos is None:
        raise DataError("spec.model.from", f"{model_dir} names no EOS token "
                        "(tokenizer_config.json eos_token or config.json eos_token_id)")
    return tokenizer, eos


def model_eos(model_dir: str) -> int | None:
    """The EOS id of a model directory (token shards end documents there); None if it names none."""
    from tokenizers import Tokenizer

    local = local_model(model_dir)
    return eos_id(local, Tokenizer.from_file(str(local / TOKENIZER)) if (local / TOKENIZER).is_file() else None)


def eos_id(model_dir: Path, tokenizer=None) -> int | None:
    """The EOS id: ``eos_token`` of tokenizer_config.json (through ``tokenizer``), else
    ``eos_token_id`` of config.json (the first of a list); None if neither names one."""
    config = model_dir / "tokenizer_config.json"
    token = json.loads(config.read_text()).get("eos_token") if tokenizer is not None and config.is_file() else None
    if isinstance(token, dict):
        token = token.get("content")
    if token is not None and (tid := tokenizer.token_to_id(token)) is not None:
        return tid
    config = model_dir / "config.json"
    tid = json.loads(config.read_text()).get("eos_token_id") if config.is_file() else None
    if isinstance(tid, list):
        tid = tid[0] if tid else None
    return tid if isinstance(tid, int) else None


def records(file: str, field: str) -> Iterator[str]:
    """The ``field`` text of every record of one JSONL or Parquet file."""
    fs, path = filesystem(file)
    with fs.open(path, "rb") as f:
        if file.endswith(".parquet"):
            import pyarrow.parquet as pq

            pf = pq.ParquetFile(f)
            if field not in pf.schema_arrow.names:
                raise DataError("spec.data.field", f"{field!r} is not a column of {file} (it has {pf.schema_arrow.names})")
            rows = (t for batch in pf.iter_batches(columns=[field]) for t in batch.column(0).to_pylist())
            yield from (_text(t, file, n, field) for n, t in enumerate(rows, 1))
            return
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except ValueError as e:
                raise DataError("spec.data.path", f"line {n} of {file} is not JSON: {e}") from None
            if not isinstance(record, dict) or field not in record:
                keys = sorted(record) if isinstance(record, dict) else type(record).__name__
                raise DataError("spec.data.field", f"{field!r} is not in the record on line {n} of {file} (it holds {keys})")
            yield _text(record[field], file, n, field)


def _text(value: object, file: str, n: int, field: str) -> str:
    if not isinstance(value, str):
        raise DataError("spec.data.field", f"{field!r} of record {n} of {file} is {type(value).__name__}, not text")
    return value


def tokenized(path: str, field: str, model_dir: str, where: str = "spec.data.path") -> Documents:
    """The documents of every record under ``path``, from the cache or tokenized into it."""
    files = listing(path, "text", where)
    tokenizer, eos = load_tokenizer(model_dir)
    spec = json.dumps([FORMAT, files, field, tokenizer.to_str(), eos])
    folder = cache_root() / hashlib.sha256(spec.encode()).hexdigest()[:24]
    folder.parent.mkdir(parents=True, exist_ok=True)
    with open(f"{folder}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one rank of this machine tokenizes; the others wait
        if not (folder / "offsets.npy").is_file():
            _write(folder, _encode(files, field, tokenizer, eos))
    tokens = np.load(folder / "tokens.npy", mmap_mode="r")
    offsets = np.load(folder / "offsets.npy")
    if len(offsets) < 2:
        raise DataError(where, f"{path} holds no text in field {field!r}")
    return Documents((tokens,), np.zeros(len(offsets) - 1, dtype=np.int64), offsets[:-1], np.diff(offsets))


def _encode(files: list[tuple[str, int, str]], field: str, tokenizer, eos: int) -> tuple[np.ndarray, np.ndarray]:
    pieces: list[np.ndarray] = []
    for file, _, _ in files:
        texts: list[str] = []
        for text in records(file, field):
            if text:
                texts.append(text)
            if len(texts) == BATCH:
                pieces.extend(_batch(texts, tokenizer, eos))
                texts = []
        pieces.extend(_batch(texts, tokenizer, eos))
    lengths = np.fromiter((len(p) for p in pieces), dtype=np.int64, count=len(pieces))
    tokens = np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.uint32)
    return tokens.astype(np.uint32), np.concatenate([[0], np.cumsum(lengths)])


def _batch(texts: list[str], tokenizer, eos: int) -> list[np.ndarray]:
    out = []
    for enc in tokenizer.encode_batch(texts) if texts else []:
        ids = enc.ids
        out.append(np.asarray(ids if ids and ids[-1] == eos else [*ids, eos], dtype=np.uint32))
    return out


def _write(folder: Path, stream: tuple[np.ndarray, np.ndarray]) -> None:
    partial = folder.with_name(f"{folder.name}.{uuid.uuid4().hex[:8]}.partial")
    partial.mkdir()
    try:
        np.save(partial / "tokens.npy", stream[0])
        np.save(partial / "offsets.npy", stream[1])
        os.replace(partial, folder)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
