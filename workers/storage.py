"""Where checkpoints live: a local folder or an object-store prefix, behind one small interface.

:func:`at` gives a :class:`LocalStore` for a path or a ``file://`` URI and an
:class:`ObjectStore` for a URL fsspec knows (``s3://bucket/prefix``, through s3fs). Paths
go in and out as full strings, a path or a URL with its scheme, as manifests and DCP name
them.

The difference that matters is the commit. A local folder is renamed into place, atomically
(``os.replace``). An object store has no folder rename (a "rename" copies every object), so
``atomic_rename`` is False there: the checkpointer writes shards straight into ``step-N/``
and commits by writing ``manifest.json`` last. Removing or moving an object-store folder
takes the ``first`` file (the manifest) first, so a folder left half removed or half moved
by a crash never looks committed.

Object-store credentials and endpoint come from the environment, read by the AWS SDK's
own chain (``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_ENDPOINT_URL``,
``AWS_REGION``), never from the URI. Standard library only at import, as ``manifest.py``
needs (the operator lists checkpoints); fsspec is imported when an object store is opened.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import IO

FILE_SCHEME = "file://"


def is_url(root: str | Path) -> bool:
    """True for an object-store URL (``s3://...``); False for a path or a ``file://`` URI."""
    text = str(root)
    return "://" in text and not text.startswith(FILE_SCHEME)


def at(root: str | Path) -> Store:
    """The store holding ``root``."""
    return ObjectStore(str(root)) if is_url(root) else LocalStore(str(root).removeprefix(FILE_SCHEME))


def name_of(path: str) -> str:
    """The last part of a path or URL (``step-00000040``)."""
    return path.rstrip("/").rsplit("/", 1)[-1]


class LocalStore:
    """A folder on a filesystem this process mounts (a PersistentVolumeClaim, a local disk)."""

    atomic_rename = True

    def __init__(self, root: str) -> None:
        self.root = str(Path(root))

    def join(self, base: str, *names: str) -> str:
        return str(Path(base, *names))

    def makedirs(self) -> None:
        Path(self.root).mkdir(parents=True, exist_ok=True)

    def folders(self, prefix: str) -> list[str]:
        """Folders directly under the root whose names start with ``prefix``."""
        return sorted(str(p) for p in Path(self.root).glob(f"{prefix}*") if p.is_dir())

    def files(self, folder: str) -> dict[str, int]:
        """Name and size in bytes of every file directly in ``folder``."""
        return {p.name: p.stat().st_size for p in sorted(Path(folder).iterdir()) if p.is_file()}

    def is_file(self, path: str) -> bool:
        return Path(path).is_file()

    def read_bytes(self, path: str) -> bytes:
        return Path(path).read_bytes()

    def write_bytes(self, path: str, data: bytes) -> None:
        Path(path).write_bytes(data)

    def open(self, path: str, mode: str = "rb") -> IO[bytes]:
        return open(path, mode)

    def remove(self, folder: str, *, first: str) -> None:  # noqa: ARG002 - one rmtree has no order to keep
        shutil.rmtree(folder, ignore_errors=True)

    def move(self, src: str, dst: str, *, first: str) -> None:
        """``src`` renamed to ``dst`` in one step (replacing ``dst``)."""
        if Path(dst).exists():
            self.remove(dst, first=first)
        os.replace(src, dst)


def filesystem(url: str):
    """``(fs, path)`` of ``url`` through fsspec, a new instance each time and no listing cache:
    another rank or generation may have written since the last look, and fsspec would otherwise
    hand back an instance made earlier with the same arguments, whose S3 endpoint and keys came
    from the environment of that time (one process may meet several servers)."""
    from fsspec.core import url_to_fs  # not at import: the operator imports this module

    return url_to_fs(url, use_listings_cache=False, skip_instance_cache=True)


class ObjectStore:
    """A prefix in an object store, through fsspec (``s3://bucket/prefix``: s3fs)."""

    atomic_rename = False

    def __init__(self, root: str) -> None:
        self.fs, _ = filesystem(root)
        self.root = root.rstrip("/")

    def join(self, base: str, *names: str) -> str:
        return "/".join([base.rstrip("/"), *names])

    def makedirs(self) -> None:
        """Nothing to make: an object store's folders are key prefixes."""

    def _entries(self, folder: str) -> list[dict]:
        try:
            return self.fs.ls(folder, detail=True)
        except FileNotFoundError:
            return []

    def folders(self, prefix: str) -> list[str]:
        """Folders directly under the root whose names start with ``prefix``."""
        return sorted(self.fs.unstrip_protocol(e["name"]) for e in self._entries(self.root)
                      if e["type"] == "directory" and name_of(e["name"]).startswith(prefix))

    def files(self, folder: str) -> dict[str, int]:
        """Name and size in bytes of every object directly in ``folder``."""
        return {name_of(e["name"]): int(e["size"]) for e in sorted(self._entries(folder), key=lambda e: e["name"])
                if e["type"] == "file"}

    def is_file(self, path: str) -> bool:
        return self.fs.isfile(path)

    def read_bytes(self, path: str) -> bytes:
        return self.fs.cat_file(path)

    def write_bytes(self, path: str, data: bytes) -> None:
        self.fs.pipe_file(path, data)

    def open(self, path: str, mode: str = "rb") -> IO[bytes]:
        return self.fs.open(path, mode)

    def remove(self, folder: str, *, first: str) -> None:
        """Every object under ``folder``, ``first`` before the others."""
        names = self.files(folder)
        if first in names:
            self.fs.rm_file(self.join(folder, first))
        rest = [self.join(folder, n) for n in names if n != first]
        if rest:
            self.fs.rm(rest)

    def move(self, src: str, dst: str, *, first: str) -> None:
        """Every object of ``src`` copied to ``dst`` (server side) and deleted, ``first``
        first: ``src`` stops counting as committed before anything else changes."""
        self.remove(dst, first=first)
        names = sorted(self.files(src), key=lambda n: n != first)
        for name in names:
            self.fs.copy(self.join(src, name), self.join(dst, name))
            self.fs.rm_file(self.join(src, name))


#: Either kind of store: what :func:`at` gives.
Store = LocalStore | ObjectStore
