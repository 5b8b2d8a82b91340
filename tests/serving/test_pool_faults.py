"""``shardwright serve --inject``: faults parse, or say what is allowed."""

from __future__ import annotations

from pathlib import Path

import pytest

from shardwright.operator.backends.localpool import PoolFault, parse_pool_fault
from shardwright.operator.cli import EXIT_INVALID, main

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def test_faults_parse():
    assert parse_pool_fault("kill:replica=1:after=2.5") == PoolFault("kill", 1, after=2.5)
    assert parse_pool_fault("slow:replica=0:delay=0.05") == PoolFault("slow", 0, delay=0.05)
    assert parse_pool_fault("slow:delay=0.05") == PoolFault("slow", None, delay=0.05)


@pytest.mark.parametrize("text, phrase", [
    ("hang:replica=0", "allowed: kill:replica=N:after=SECONDS"),
    ("kill:replica=0", "kill needs after"),
    ("kill:replica=0:after=x", "after must be a number"),
    ("kill:replica=-1:after=1", "replica must be a replica number"),
    ("slow:replica=0:after=1", "'after=1' is not one of slow's settings"),
])
def test_bad_faults_say_what_is_allowed(text, phrase):
    with pytest.raises(ValueError, match=phrase):
        parse_pool_fault(text)


def test_serve_refuses_a_bad_fault_and_a_training_job(capsys):
    assert main(["serve", str(EXAMPLES / "tiny-serve.yaml"), "--inject", "kill:replica=0"]) == EXIT_INVALID
    assert "--inject: kill:replica=0: kill needs after" in capsys.readouterr().err
    assert main(["serve", str(EXAMPLES / "tiny-train.yaml")]) == EXIT_INVALID
    assert "expected exactly one ServingPool, found 0" in capsys.readouterr().err
