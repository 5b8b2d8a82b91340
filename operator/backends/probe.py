"""Reading a rank's telemetry: rank 0's ``/status`` as controller values, committed checkpoints.

Shared by the local and the Kubernetes backends. Standard library only, short timeouts: a
rank that does not answer within ``PROBE_TIMEOUT_S`` simply reports no progress this pass.
"""

from __future__ import annotations

import http.client
import json
import urllib.request
from pathlib import Path
from typing import Any

from shardwright.operator.api import CheckpointRef
from shardwright.operator.api.trainingjobstatus import EvaluationResult
from shardwright.operator.controller import Progress, StepTiming
from shardwright.workers.manifest import committed

#: Seconds an HTTP probe of a rank may take before the rank counts as not answering.
PROBE_TIMEOUT_S = 0.5
#: A rank that does not answer: refused, timed out, or something else now holds its port
#: (a dead rank's port taken by another process answers garbage: ``BadStatusLine``).
NO_ANSWER = (OSError, http.client.HTTPException)


def progress_from_status(status: dict[str, Any], generation: int) -> Progress | None:
    """Rank 0's ``/status`` JSON as a controller ``Progress`` (None if another generation's)."""
    if status.get("generation") != generation:
        return None
    return Progress(
        generation=generation,
        step=int(status.get("step") or 0),
        loss=status.get("loss"),
        tokens_per_second=status.get("tokensPerSecond"),
        step_seconds=tuple(status.get("stepSeconds") or ()),
        resumed_from=status.get("resumedFrom"),
        rejected=tuple((r["step"], r["reason"]) for r in status.get("rejectedCheckpoints") or ()),
        timings=tuple(_timing(t) for t in status.get("stepTimings") or () if isinstance(t, dict)),
        data_shares=tuple(status["dataShares"]) if status.get("dataShares") else None,
        evaluation=_evaluation(status.get("evaluation")),
    )


def _evaluation(entry: Any) -> EvaluationResult | None:
    """Rank 0's ``evaluation`` ({step, loss, perplexity}); None when absent or malformed."""
    try:
        return EvaluationResult.model_validate(entry) if isinstance(entry, dict) else None
    except ValueError:
        return None


def _timing(entry: dict[str, Any]) -> StepTiming:
    return StepTiming(
        step=int(entry.get("step", 0)), compute=tuple(entry.get("compute") or ()),
        wait=tuple(entry.get("wait") or ()), samples=tuple(entry.get("samples") or ()),
        busy=tuple(entry.get("busy") or ()),
    )


def checkpoint_from_status(status: dict[str, Any]) -> CheckpointRef | None:
    """The last committed checkpoint rank 0 reports in ``/status`` (``lastCheckpoint``)."""
    last = status.get("lastCheckpoint")
    if not isinstance(last, dict):
        return None
    try:
        return CheckpointRef(step=last["step"], uri=last["path"], world_size=last["worldSize"], layout=last["layout"])
    except (KeyError, ValueError):
        return None


def checkpoint_refs(root: Path | str) -> tuple[CheckpointRef, ...]:
    """Committed checkpoints under a directory (or s3:// URI) this process can read, oldest first."""
    return tuple(
        CheckpointRef(step=m["step"], uri=m["path"], world_size=m["worldSize"], layout=m["layout"])
        for m in committed(root)
    )


def fetch_text(url: str) -> str | None:
    try:
        with urllib.request.urlopen(url, timeout=PROBE_TIMEOUT_S) as response:
            return response.read().decode()
    except NO_ANSWER:
        return None


def request_json(url: str, payload: dict[str, Any] | None = None, *, token: str | None = None) -> dict[str, Any] | None:
    """GET ``url`` (``payload`` None) or POST ``payload`` to it as JSON: a rank's ``/status``
    and ``/control``, from every backend, with the job's ``token`` as a bearer token. The
    JSON object answered (``{}`` for an accepted request with an empty body), or None when
    the rank did not answer within ``PROBE_TIMEOUT_S``, refused (an HTTP error, 401 without
    the right token), or answered something else."""
    data = None if payload is None else json.dumps(payload).encode()
    headers = {} if data is None else {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(url, data=data, headers=headers, method="GET" if data is None else "POST")
    try:
        with urllib.request.urlopen(request, timeout=PROBE_TIMEOUT_S) as response:
            body = response.read()
    except NO_ANSWER:
        return None
    try:
        answer = json.loads(body) if body else {}
    except ValueError:
        return None
    return answer if isinstance(answer, dict) else None
