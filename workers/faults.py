"""Faults a user (or a test) injects into a run: ``shardwright run --inject KIND:key=value:...``.

Rank-side faults, carried to the ranks in ``WorkerConfig.faults``:

- ``kill:rank=1:step=30``             the rank's process exits abruptly (code 137) after step 30;
  ``kill:rank=1:step=30:during=checkpoint`` kills it while the checkpoint of step 30 is written;
- ``hang:rank=0:step=50``             the rank stops making progress after step 50;
- ``kill:rank=3:into=5:gen=4``        ``into`` instead of ``step``: 5 steps into generation 4,
                                      whatever step it resumed at (a generation after a
                                      resize starts at a step the plan cannot know);
- ``slow:rank=2:factor=1.5``          every step of the rank takes 1.5x its compute time
                                      (optionally ``:step=N`` to start later);
- ``corrupt-checkpoint:step=40``      the committed checkpoint of step 40 gets a damaged shard.

Capacity faults, handled by the local runner (they change the rank budget):

- ``shrink:ranks=1:step=60``          at step 60, that many ranks' hosts are lost for good;
- ``grow:step=90``                    at step 90, the lost capacity returns.

Rank-side faults fire in one generation only (``gen``, default 1), so a restarted run
does not fail again at the same step. Parsing is pure (no torch), shared by the CLI.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

RANK_KINDS = ("kill", "hang", "slow", "corrupt-checkpoint")
CAPACITY_KINDS = ("shrink", "grow")
#: Exit code of a killed rank (what SIGKILL gives a shell).
KILL_EXIT_CODE = 137


class Fault(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: str
    rank: int | None = None
    step: int = Field(default=0, ge=0)
    factor: float = Field(default=1.0, ge=1.0)
    ranks: int = Field(default=1, ge=1)
    gen: int = Field(default=1, ge=1)
    #: ``checkpoint``: a kill strikes while the checkpoint of ``step`` is being written.
    during: Literal["checkpoint"] | None = None
    #: Steps into the generation (after the step it resumed at), in place of ``step``.
    into: int | None = Field(default=None, ge=1)

    def fires(self, *, rank: int, step: int, generation: int, start: int = 0) -> bool:
        """True at exactly the step (and generation, and rank) this fault names; ``start``:
        the step the generation resumed at, which ``into`` counts from."""
        at = self.step if self.into is None else start + self.into
        return generation == self.gen and step == at and self.rank in (None, rank)

    def active(self, *, rank: int, step: int, generation: int) -> bool:
        """True from the named step on, for lasting faults such as ``slow``."""
        return generation == self.gen and step >= self.step and self.rank in (None, rank)


_KEYS = {
    "kill": {"rank", "step", "into", "gen", "during"},
    "hang": {"rank", "step", "into", "gen"},
    "slow": {"rank", "factor", "step", "gen"},
    "corrupt-checkpoint": {"step", "gen"},
    "shrink": {"ranks", "step"},
    "grow": {"step"},
}
_REQUIRED = {"kill": {"rank"}, "hang": {"rank"}, "slow": {"rank", "factor"}, "corrupt-checkpoint": {"step"}, "shrink": {"step"}, "grow": set()}


def strike(faults: Iterable[Fault], *, rank: int, step: int, generation: int, start: int = 0, during: str | None = None,
           on_hang: Callable[[], None] | None = None) -> float:
    """Carry out the rank faults that fire after ``step`` (or ``during`` its checkpoint), for
    the trainer and the SDK alike: ``kill`` exits the process abruptly, ``hang`` never returns
    (after ``on_hang``). ``start``: the step the generation resumed at. Returns the ``slow``
    factor in force (1.0: none) for the caller to stretch its compute by."""
    factor = 1.0
    where = {"rank": rank, "step": step, "generation": generation}
    for fault in faults:
        if fault.during != during:
            continue
        if fault.kind == "slow" and fault.active(**where):
            factor *= fault.factor
        elif fault.kind == "kill" and fault.fires(**where, start=start):
            print(f"rank {rank}: injected fault kill after step {step} (generation {generation}): exiting with code {KILL_EXIT_CODE}", flush=True)
            os._exit(KILL_EXIT_CODE)
        elif fault.kind == "hang" and fault.fires(**where, start=start):
            if on_hang is not None:
                on_hang()
            while True:
                time.sleep(3600)
    return factor


def parse_fault(text: str) -> Fault:
    """``kill:rank=1:step=30`` -> Fault; ValueError naming what is allowed otherwise."""
    kind, *pairs = text.split(":")
    if kind not in _KEYS:
        raise ValueError(f"unknown fault {kind!r}; allowed: {', '.join(_KEYS)}")
    values: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or key not in _KEYS[kind]:
            allowed = ", ".join(f"{k}=..." for k in sorted(_KEYS[kind]))
            raise ValueError(f"{text}: {pair!r} is not one of {kind}'s settings ({allowed})")
        values[key] = value
    missing = _REQUIRED[kind] - values.keys()
    if missing:
        raise ValueError(f"{text}: {kind} needs {', '.join(sorted(missing))}")
    if kind in ("kill", "hang") and len(values.keys() & {"step", "into"}) != 1:
        raise ValueError(f"{text}: {kind} needs step=N or into=N (steps into its generation), not both")
    if "during" in values and "into" in values:
        raise ValueError(f"{text}: during=checkpoint needs step=N (the checkpoint's step), not into")
    try:
        return Fault(kind=kind, **values)
    except ValueError as e:
        raise ValueError(f"{text}: {e.errors()[0]['loc'][0]} {e.errors()[0]['msg'].lower()}") from None
