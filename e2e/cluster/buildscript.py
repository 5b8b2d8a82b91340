"""Running one of the repository's cached build scripts (the control plane's, the S3 server's).

Each script builds from the Go module proxy into ~/.cache/shardwright, is a no-op when the
result is cached, and prints the built folder or binary as its last line.
"""

from __future__ import annotations

import subprocess
from pathlib import Path


def built(script: Path, what: str, *, timeout: float) -> Path:
    """The path ``script`` prints last; a failed build raises with the tail of its log."""
    out = subprocess.run(["bash", str(script)], capture_output=True, text=True, timeout=timeout)
    if out.returncode != 0:
        raise RuntimeError(f"building {what} failed ({script.relative_to(script.parents[2])}):\n{out.stderr[-3000:]}")
    return Path(out.stdout.strip().splitlines()[-1])
