"""A job's directory on this machine: what ``shardwright run`` writes there, and what
``get``, ``status``, ``logs`` and ``plot`` read back.

``.shardwright/<namespace>/<name>/`` by default (``--workdir`` puts one elsewhere):
``job.yaml`` (the object as last run), ``status.json``, ``events.jsonl``, ``steps.jsonl``,
``metrics.prom``, ``logs/rank-N.log`` (each rank's output, every generation appended) and
``checkpoints/``. Standard library and PyYAML only: the read commands start in well under a
second.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

#: Where ``shardwright run`` keeps job directories unless ``--workdir`` says otherwise.
ROOT = Path(".shardwright")
#: Phases after which nothing more happens to a job until it is run again.
SETTLED = ("Complete", "Failed", "Suspended")
#: Seconds between looks at the log files for ``logs -f``.
FOLLOW_POLL_S = 0.25
#: ``logs -f`` ends once the job has settled and no rank wrote for this many seconds (the
#: ranks of a suspended job still write their checkpoint after the status says Suspended).
FOLLOW_QUIET_S = 2.0


@dataclasses.dataclass(frozen=True)
class JobDir:
    path: Path

    @property
    def status_file(self) -> Path:
        return self.path / "status.json"

    @property
    def manifest_file(self) -> Path:
        return self.path / "job.yaml"

    @property
    def log_dir(self) -> Path:
        return self.path / "logs"

    def rank_log(self, rank: int) -> Path:
        return self.log_dir / f"rank-{rank}.log"

    def rank_logs(self) -> dict[int, Path]:
        """Every rank's log file, by rank."""
        found = {}
        for path in self.log_dir.glob("rank-*.log"):
            if (number := path.stem.removeprefix("rank-")).isdigit():
                found[int(number)] = path
        return dict(sorted(found.items()))

    def status(self) -> dict[str, Any] | None:
        """The last status written, None if there is none (not run yet, or unreadable)."""
        try:
            status = json.loads(self.status_file.read_text())
        except (OSError, ValueError):
            return None
        return status if isinstance(status, dict) else None

    def manifest(self) -> dict[str, Any]:
        """The object as last run (``{}`` for a directory from before job.yaml was kept)."""
        try:
            doc = yaml.safe_load(self.manifest_file.read_text())
        except (OSError, yaml.YAMLError):
            return {}
        return doc if isinstance(doc, dict) else {}

    def write_manifest(self, doc: dict[str, Any]) -> None:
        self.manifest_file.write_text(yaml.safe_dump(doc, sort_keys=False))

    def steps(self) -> list[dict[str, Any]]:
        """Rank 0's step log, oldest first; a step run again after a restart appears twice."""
        return _json_lines(self.path / "steps.jsonl")

    def events(self) -> list[dict[str, Any]]:
        return _json_lines(self.path / "events.jsonl")

    def completed_at(self, total_steps: int) -> int | None:
        """The step a finished run of this job reached, if it trained ``total_steps`` already."""
        status = self.status() or {}
        step = status.get("step") or 0
        return step if status.get("phase") == "Complete" and step >= total_steps else None


def read_logs(job: JobDir, logs: dict[int, Path], *, follow: bool, all_ranks: bool) -> Iterator[tuple[int, str]]:
    """``(rank, line)`` of each log in ``logs``, rank by rank; with ``follow``, then new lines as
    they come (and logs of ranks that appear, for ``all_ranks``) until the job has settled
    and its logs have been quiet for ``FOLLOW_QUIET_S``."""
    offsets = dict.fromkeys(logs, 0)
    quiet_since = time.monotonic()
    while True:
        grew = False
        if all_ranks:
            offsets.update({rank: 0 for rank in job.rank_logs() if rank not in offsets})
        for rank in sorted(offsets):
            with job.rank_log(rank).open() as f:
                f.seek(offsets[rank])
                while line := f.readline():
                    if follow and not line.endswith("\n"):
                        break  # a line being written: it is printed once it ends
                    offsets[rank] = f.tell()
                    grew = True
                    yield rank, line if line.endswith("\n") else line + "\n"
        if not follow:
            return
        now = time.monotonic()
        if grew:
            quiet_since = now
        elif (job.status() or {}).get("phase") in SETTLED and now - quiet_since > FOLLOW_QUIET_S:
            return
        time.sleep(FOLLOW_POLL_S)


def every(root: Path = ROOT) -> list[JobDir]:
    """The job directories under ``root`` (``<namespace>/<name>/``), by namespace and name."""
    return [JobDir(path) for path in sorted(root.glob("*/*")) if (path / "status.json").exists() or (path / "job.yaml").exists()]


def lookup(name: str, namespace: str | None, root: Path = ROOT) -> JobDir:
    """The directory of job ``name`` (in ``namespace``, or the only namespace that has one);
    LookupError saying what exists otherwise."""
    matches = [d for d in every(root) if d.path.name == name and namespace in (None, d.path.parent.name)]
    if len(matches) == 1:
        return matches[0]
    if matches:
        spaces = ", ".join(d.path.parent.name for d in matches)
        raise LookupError(f"{name}: one job of that name in each of the namespaces {spaces}; choose one with -n")
    known = ", ".join(f"{d.path.parent.name}/{d.path.name}" for d in every(root)) or "none"
    where = f"{namespace}/{name}" if namespace else name
    raise LookupError(f"{where}: no job of that name under {root}/ (jobs there: {known}); give its manifest or --workdir instead")


def summary(name: str, status: dict[str, Any], total_steps: int | None) -> str:
    """One line a person reads first: phase, step, loss, ranks, restarts."""
    total = f"/{total_steps}" if total_steps else ""
    loss = status.get("loss")
    parts = [
        f"{name}: {status.get('phase', 'Pending')} at step {status.get('step', 0)}{total}",
        f"loss {loss:.4f}" if isinstance(loss, int | float) else "loss -",
        f"{status.get('worldSize', 0)} ranks",
        f"generation {status.get('generation', 0)}",
        f"restarts {status.get('restarts', 0)}",
    ]
    if (ckpt := status.get("lastCheckpoint")) is not None:
        parts.append(f"last checkpoint step {ckpt.get('step')}")
    return ", ".join(parts)


def describe(job: JobDir, status: dict[str, Any], events: int = 5) -> str:
    """What ``shardwright status`` prints: the summary line, the conditions, the last events."""
    doc = job.manifest()
    meta = doc.get("metadata") or {}
    name = f"{meta.get('namespace', job.path.parent.name)}/{meta.get('name', job.path.name)}"
    lines = [summary(name, status, _total_steps(doc))]
    lines += [f"  {c['type']:<11} {c['status']:<5} {c['reason']}: {c.get('message', '')}" for c in status.get("conditions", [])]
    lines += [f"  event       {e['type']:<7} {e['reason']}: {e['message']}" for e in job.events()[-events:]]
    lines.append(f"  files       {job.path}/ (all of the status: -o yaml)")
    return "\n".join(lines)


def row(job: JobDir, now: datetime.datetime) -> dict[str, str]:
    """One line of ``shardwright get``."""
    status, doc = job.status() or {}, job.manifest()
    total = _total_steps(doc)
    loss = status.get("loss")
    return {
        "NAMESPACE": job.path.parent.name,
        "NAME": job.path.name,
        "KIND": doc.get("kind", "TrainingJob"),
        "PHASE": status.get("phase", "-"),
        "STEP": f"{status.get('step', 0)}/{total}" if total else str(status.get("step", 0)),
        "LOSS": f"{loss:.4f}" if isinstance(loss, int | float) else "-",
        "RESTARTS": str(status.get("restarts", 0)),
        "AGE": age(status.get("startTime"), now),
    }


def age(since: str | None, now: datetime.datetime) -> str:
    """kubectl's short age: ``45s``, ``12m``, ``3h``, ``2d`` (``-`` when unknown)."""
    if not since:
        return "-"
    try:
        began = datetime.datetime.fromisoformat(since.replace("Z", "+00:00"))
    except ValueError:
        return "-"
    seconds = max(int((now - began).total_seconds()), 0)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def table(rows: list[dict[str, str]]) -> str:
    """Rows as kubectl prints them: upper-case headers, columns padded to their widest cell."""
    if not rows:
        return ""
    widths = {key: max(len(key), *(len(r[key]) for r in rows)) for key in rows[0]}
    lines = [[key.ljust(widths[key]) for key in rows[0]]] + [[r[key].ljust(widths[key]) for key in r] for r in rows]
    return "\n".join("   ".join(cells).rstrip() for cells in lines)


def _total_steps(doc: dict[str, Any]) -> int | None:
    return ((doc.get("spec") or {}).get("training") or {}).get("steps")


def _json_lines(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            continue  # a line being written as we read
    return out
