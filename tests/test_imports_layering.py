"""The dependency direction of STYLE.md holds: `lint-imports` keeps every contract in .importlinter."""

from __future__ import annotations

import configparser
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"


def test_contracts_cover_the_layers_we_promise():
    config = configparser.ConfigParser()
    config.read(REPO / ".importlinter")
    contracts = [s for s in config.sections() if s.startswith("importlinter:contract:")]
    assert {c.rsplit(":", 1)[1] for c in contracts} == {
        "operator-layers", "kernels-standalone", "workers-without-operator", "pure-controller",
        "operator-without-torch", "sdk-on-top", "sdk-without-operator",
    }


def test_lint_imports_keeps_every_contract():
    out = subprocess.run(
        [str(LINT_IMPORTS), "--no-cache"], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    report = out.stdout + out.stderr
    assert out.returncode == 0, report
    assert "kept, 0 broken." in report, report
