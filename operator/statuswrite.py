"""The status a job's loop writes: what it computed, what the server has, and conditional
writes that never overwrite another writer's update.

Each write carries the resourceVersion it was computed from (a 409 means someone wrote in
between: forget what was computed and start the next pass from a fresh read). The watched
body may lag behind this loop's own writes; the versions those writes replaced are kept, so
a lagging body is never mistaken for the server's latest. The generation intent is written
before its pods are created and taken back if none could be.

Per-step figures (step, loss, tokens/s, step times) go to the operator's metrics on every
pass; a status that differs from the written one only in those is written at most every
``OperatorConfig.progress_status_seconds`` (:meth:`StatusMemory.progress_wait`), so a
running job does not cost an API write every resync.
"""

from __future__ import annotations

import dataclasses
import logging
import random
import time
from typing import Any

from shardwright.operator.api import TrainingJobStatus
from shardwright.operator.backends import pods as render
from shardwright.operator.backends.kubernetes import ApiFailure, patch_status, read_job
from shardwright.operator.operatorconfig import OperatorConfig


log = logging.getLogger(__name__)
#: Status fields that change with every step: alone, they do not call for a write at once.
PROGRESS_FIELDS = frozenset({"step", "loss", "tokensPerSecond", "lastProgressTime", "evaluation"})
#: The same, in each entry of these status lists.
PROGRESS_ITEM_FIELDS = {"ranks": frozenset({"stepSeconds"}), "stragglers": frozenset({"score", "selfScore"})}


def without_progress(wire: dict[str, Any]) -> dict[str, Any]:
    """The status with its per-step figures left out: what a user acts on."""
    out = {k: v for k, v in wire.items() if k not in PROGRESS_FIELDS}
    for field, keys in PROGRESS_ITEM_FIELDS.items():
        if field in out:
            out[field] = [{k: v for k, v in item.items() if k not in keys} for item in out[field]]
    return out


@dataclasses.dataclass
class StatusMemory:
    """What this loop knows beyond the watched object: the status it computed (used as the
    next input even if writing it failed) and the status the server has."""

    #: The job's uid: a new object under the same name starts from nothing.
    uid: str | None = None
    status: TrainingJobStatus | None = None
    written: dict[str, Any] | None = None
    #: resourceVersion the next status write is conditional on: the body's, or that of our
    #: own last write while the watched body still shows a version before it (``lagging``:
    #: every version our writes replaced since the body last caught up).
    rv: str | None = None
    lagging: set[str] = dataclasses.field(default_factory=set)
    #: Failed passes in a row (the backoff's exponent) and the last rejection told of.
    failures: int = 0
    rejection: str | None = None
    #: When (monotonic seconds) the last status write succeeded.
    written_at: float = -float("inf")
    #: Fields of the object this operator does not know (a newer CRD's), already logged.
    unknown_fields: list[str] = dataclasses.field(default_factory=list)

    def backoff(self, cfg: OperatorConfig) -> float:
        """Seconds until the next attempt after this many failures in a row: exponential
        with jitter, so many jobs failing at once do not retry in step."""
        self.failures += 1
        return min(cfg.retry_max_seconds, cfg.retry_seconds * 2 ** (self.failures - 1)) * random.uniform(0.8, 1.2)

    def progress_wait(self, wire: dict[str, Any], every_s: float) -> float:
        """Seconds until ``wire`` is due to be written: 0 when it changes something besides
        per-step figures (or nothing was written yet), else what is left of ``every_s``
        since the last write."""
        if self.written is None or without_progress(wire) != without_progress(self.written):
            return 0.0
        return max(0.0, self.written_at + every_s - time.monotonic())


def write_status(memo, owner: render.Owner, memory: StatusMemory, wire: dict[str, Any], *, old: dict[str, Any] | None = None) -> None:
    """Write the status, conditional on the version it was computed from. A 409 means
    someone else wrote in between: forget what this loop computed, read the object again,
    and let the next pass start from the server's status."""
    if wire == memory.written and old is None:
        return
    try:
        rv = patch_status(memo.api, owner.namespace, owner.name, old if old is not None else memory.written or {}, wire, memory.rv)
    except ApiFailure as e:
        if e.status == 409:
            memory.status, memory.written = None, None
            memory.lagging.clear()
            if (fresh := read_job(memo.api, owner.namespace, owner.name)) is not None:
                memo.bodies[(owner.namespace, owner.name)] = fresh
        raise
    if memory.rv is not None:
        memory.lagging.add(memory.rv)
    memory.written, memory.rv, memory.written_at = wire, rv, time.monotonic()


def take_back(memo, owner: render.Owner, memory: StatusMemory, intent: dict[str, Any], before: dict[str, Any]) -> None:
    """Nothing of the new generation started: write the status from before the intent back,
    even when the intent's write seemed to fail (its response may be what was lost). Best
    effort: if this fails too, the generation's missing pods are noticed after
    ``vanished_after_s`` and it starts again."""
    try:
        write_status(memo, owner, memory, before, old={**(memory.written or {}), **intent})
    except ApiFailure as e:
        log.info(f"Status of {owner.namespace}/{owner.name} not taken back: {e}")
