"""The controller core imports no framework, client or tensor library (it must start fast)."""

from __future__ import annotations

import subprocess
import sys

from tests.support.manifests import REPO

FORBIDDEN = ("torch", "kopf", "kubernetes", "ray")


def test_controller_imports_no_heavy_or_io_modules():
    code = (
        "import sys, shardwright.operator.controller\n"
        f"print(sorted(m for m in {FORBIDDEN!r} if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]", f"controller pulled in {out.stdout.strip()}"
