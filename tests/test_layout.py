"""Packaging: `operator` stays the standard library, and shardwright installs without the repo."""

from __future__ import annotations

import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PYTHON = REPO / ".venv" / "bin" / "python"


def _python(code: str, cwd: Path, env: dict | None = None) -> str:
    out = subprocess.run(
        [str(PYTHON), "-c", code], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout.strip()


def test_import_operator_from_the_repo_root_is_the_standard_library():
    where = Path(_python("import operator; print(operator.__file__)", REPO))
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    assert where.parent.resolve() == stdlib.resolve(), where
    assert _python("import operator; print(operator.itemgetter(1)('ab'))", REPO) == "b"


def test_non_editable_install_imports_from_site(tmp_path):
    """Built from a copy (the repo tree is never written), installed into a plain folder."""
    src, target = tmp_path / "src", tmp_path / "site"
    src.mkdir()
    for name in ("pyproject.toml", "setup.py", "README.md"):
        if (REPO / name).exists():
            shutil.copy(REPO / name, src / name)
    (src / "README.md").touch()
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for folder in ("operator", "workers", "kernels", "sdk"):
        shutil.copytree(REPO / folder, src / folder, ignore=ignore)
    pip = [str(PYTHON), "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index",
           "--quiet", "--target", str(target), str(src)]
    out = subprocess.run(pip, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr

    code = (
        "import shardwright.operator.api as a, shardwright.workers.config as w, "
        "shardwright.kernels.comm as k\n"
        "print(a.__file__); print(w.__file__); print(k.__file__)"
    )
    env = {"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin"}
    files = [Path(f) for f in _python(code, tmp_path, env).splitlines()]
    assert len(files) == 3
    for f in files:
        assert f.is_relative_to(target), f"{f} imported from outside the install"
    assert (target / "shardwright" / "operator" / "py.typed").exists()
