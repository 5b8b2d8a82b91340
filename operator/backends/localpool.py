"""``shardwright serve``: a ServingPool's replicas as local processes behind one router.

Each replica is ``python -m shardwright.workers.serve --config <its ServeConfig>`` in its own
session (so Ctrl-C reaches this process only, which then drains them in order); its output
goes to ``logs/<replica>.log``. The router runs on threads of this process (it imports no
torch). ``LocalPoolBackend`` turns processes and the router's view into a ``PoolObserved``
and carries out the pool core's actions; ``serve`` is the loop: observe, reconcile, apply,
write ``status.json`` and ``events.jsonl`` (and ``replicas.json``: name, pid, url, state),
as ``shardwright run`` does for a job, and show the live table (``pooltable``). Editing the file while it runs applies the new spec
(a new model or engine rolls the replicas). Ctrl-C routes every replica away, drains them
(SIGTERM: running requests finish) and stops the router; a second Ctrl-C kills at once.

Faults for tests (``--inject``): ``kill:replica=N:after=SECONDS`` SIGKILLs replica N that
many seconds after it became routable; ``slow:replica=N:delay=SECONDS`` makes every engine
iteration of replica N (of every replica, without ``replica=``) sleep first.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from collections.abc import Callable
from typing import Literal, TextIO

from shardwright.operator import jobdir
from shardwright.operator.api import EventType
from shardwright.operator.api.servingpool import PoolConditionType, PoolPhase, PoolReason, ReplicaState, ServingPool, ServingPoolStatus
from shardwright.operator.api.validation import InvalidManifest, load_documents, validate
from shardwright.operator.backends.pooltable import LiveTable
from shardwright.operator.controller import Event, rfc3339
from shardwright.operator.controller.conditions import set_condition
from shardwright.operator.controller.pool import (
    DrainReplica,
    ForgetReplica,
    PoolAction,
    PoolRef,
    RegisterReplica,
    RouteAway,
    StartReplica,
    StopReplica,
    reconcile_pool,
    router_config,
)
from shardwright.operator.controller.pool_observed import PoolMemory, PoolObserved, ReplicaObservation
from shardwright.workers.serve.router.server import Router

#: Seconds a replica process gets to exit after SIGKILL before it is given up on.
KILL_WAIT_S = 10.0
#: Seconds between two tables printed into a pipe when only the figures change (a replica or a count changing prints at once).
TABLE_EVERY_S = 5.0


@dataclasses.dataclass(frozen=True)
class PoolFault:
    kind: Literal["kill", "slow"]
    #: The replica's number; None (slow only): every replica.
    replica: int | None
    #: kill: seconds after the replica became routable.
    after: float = 0.0
    #: slow: seconds every engine iteration sleeps first.
    delay: float = 0.0


def parse_pool_fault(text: str) -> PoolFault:
    """``kill:replica=0:after=5``, ``slow:replica=1:delay=0.05`` or ``slow:delay=0.05`` (every
    replica); ValueError saying what is allowed."""
    kind, *pairs = text.split(":")
    keys = {"kill": {"replica", "after"}, "slow": {"replica", "delay"}}
    optional = {"kill": set(), "slow": {"replica"}}
    if kind not in keys:
        raise ValueError(f"unknown fault {kind!r}; allowed: kill:replica=N:after=SECONDS, slow:replica=N:delay=SECONDS")
    values: dict[str, float] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or key not in keys[kind]:
            raise ValueError(f"{text}: {pair!r} is not one of {kind}'s settings ({', '.join(sorted(keys[kind]))})")
        try:
            values[key] = float(value)
        except ValueError:
            raise ValueError(f"{text}: {key} must be a number, got {value!r}") from None
    if missing := keys[kind] - optional[kind] - values.keys():
        raise ValueError(f"{text}: {kind} needs {', '.join(sorted(missing))}")
    replica = values.pop("replica", None)
    if replica is not None and (replica < 0 or replica != int(replica)):
        raise ValueError(f"{text}: replica must be a replica number (0, 1, ...)")
    return PoolFault(kind, None if replica is None else int(replica), **values)  # type: ignore[arg-type]


@dataclasses.dataclass(frozen=True)
class LocalPoolSettings:
    workdir: Path
    #: The router's port (0: a free one).
    port: int = 0
    #: Seconds between reconcile passes.
    poll_seconds: float = 0.25
    faults: tuple[PoolFault, ...] = ()
    #: The manifest, watched for edits while serving (None: the spec never changes).
    manifest: Path | None = None


@dataclasses.dataclass
class _Replica:
    name: str
    index: int
    revision: str
    proc: subprocess.Popen
    port_file: Path
    state: ReplicaState
    since: datetime.datetime
    stopping: bool = False
    url: str | None = None
    routable_since: float | None = None


class LocalPoolBackend:
    def __init__(self, pool: ServingPool, settings: LocalPoolSettings) -> None:
        self.ref = PoolRef(pool.metadata.name, pool.metadata.namespace, pool.metadata.generation)
        self.settings = settings
        self.router = Router(router_config(self.ref, pool.spec).model_copy(update={"port": settings.port}))
        self.replicas: dict[str, _Replica] = {}
        self.dir = settings.workdir / "replicas"
        self.log_dir = settings.workdir / "logs"
        self._fired: set[PoolFault] = set()

    def start(self) -> str:
        self.dir.mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.router.start()
        return self.router.url

    # observing -----------------------------------------------------------

    def observe(self, now: datetime.datetime) -> PoolObserved:
        out = []
        for r in self.replicas.values():
            state = self._state(r)
            if state is not r.state:
                r.state, r.since = state, now
            ep = self.router.endpoints.get(r.name)
            status = (ep.status if ep else None) or {}
            if ep is not None and ep.routable and r.routable_since is None:
                r.routable_since = time.monotonic()
            out.append(ReplicaObservation(
                name=r.name, index=r.index, revision=r.revision, state=r.state, since=r.since, stopping=r.stopping,
                registered=ep is not None, routable=bool(ep and ep.routable), routed_away=bool(ep and ep.routed_away),
                exit_code=r.proc.returncode, waiting=int(status.get("waiting") or 0), running=int(status.get("running") or 0),
                ttft_p50=_get(status, "ttftSeconds", "p50"), ttft_p99=_get(status, "ttftSeconds", "p99"),
                tpot_p50=_get(status, "tpotSeconds", "p50"), tpot_p99=_get(status, "tpotSeconds", "p99"),
                tokens_per_second=status.get("tokensPerSecond"),
            ))
        return PoolObserved(now, tuple(out), held_requests=self.router.counters.as_dict()["held"], endpoint=self.router.url)

    def _state(self, r: _Replica) -> ReplicaState:
        if r.proc.poll() is not None:
            return ReplicaState.EXITED
        if r.stopping:
            return ReplicaState.DRAINING
        if r.url is None and r.port_file.exists() and (port := r.port_file.read_text().strip()):
            r.url = f"http://127.0.0.1:{port}"  # written once the replica has warmed up and listens
        return ReplicaState.READY if r.url else ReplicaState.STARTING

    # acting --------------------------------------------------------------

    def apply(self, action: PoolAction) -> None:
        if isinstance(action, StartReplica):
            self._start(action)
        elif isinstance(action, RegisterReplica) and (r := self.replicas.get(action.name)) and r.url:
            self.router.register(r.name, r.url)
        elif isinstance(action, RouteAway):
            self.router.route_away(action.name)
        elif isinstance(action, DrainReplica) and (r := self.replicas.get(action.name)):
            r.stopping = True
            _signal(r.proc, signal.SIGTERM)
        elif isinstance(action, StopReplica) and (r := self.replicas.get(action.name)):
            r.stopping = True
            _signal(r.proc, signal.SIGKILL)
        elif isinstance(action, ForgetReplica) and (r := self.replicas.pop(action.name, None)):
            self.router.remove(r.name)
            r.proc.wait(KILL_WAIT_S)

    def _start(self, action: StartReplica) -> None:
        port_file = self.dir / f"{action.name}.port"
        port_file.unlink(missing_ok=True)
        delay = sum(f.delay for f in self.settings.faults if f.kind == "slow" and f.replica in (None, action.index))
        config = action.config.model_copy(update={"host": "127.0.0.1", "port": 0, "port_file": str(port_file), "iteration_delay_s": delay})
        config_file = self.dir / f"{action.name}.json"
        config_file.write_text(config.model_dump_json(indent=1))
        with (self.log_dir / f"{action.name}.log").open("ab") as log:
            proc = subprocess.Popen([sys.executable, "-m", "shardwright.workers.serve", "--config", str(config_file)],
                                    stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        now = datetime.datetime.now(datetime.timezone.utc)
        self.replicas[action.name] = _Replica(action.name, action.index, action.revision, proc, port_file, ReplicaState.STARTING, now)

    def inject(self) -> list[str]:
        """Fire the kill faults that are due; a line saying what was done for each."""
        notes = []
        for fault in self.settings.faults:
            if fault.kind != "kill" or fault in self._fired:
                continue
            r = next((r for r in self.replicas.values() if r.index == fault.replica), None)
            if r is not None and r.routable_since is not None and time.monotonic() - r.routable_since >= fault.after:
                self._fired.add(fault)
                _signal(r.proc, signal.SIGKILL)
                notes.append(f"Injected: replica {r.name} (pid {r.proc.pid}) killed")
        return notes

    def write_replicas(self, path: Path) -> None:
        rows = [{"name": r.name, "pid": r.proc.pid, "url": r.url, "revision": r.revision, "state": str(r.state)} for r in self.replicas.values()]
        _write_json(path, {"replicas": rows})

    def close(self, drain_timeout: float, *, hurry: Callable[[], bool] = lambda: False) -> None:
        """Route every replica away, drain them (SIGTERM) for up to ``drain_timeout`` s, kill
        what is left (at once when ``hurry()`` turns true), stop the router."""
        for r in self.replicas.values():
            self.router.route_away(r.name)
            _signal(r.proc, signal.SIGTERM)
        deadline = time.monotonic() + drain_timeout + 5  # the replica ends its own drain at the timeout
        while any(r.proc.poll() is None for r in self.replicas.values()) and time.monotonic() < deadline and not hurry():
            time.sleep(0.05)
        for r in self.replicas.values():
            _signal(r.proc, signal.SIGKILL)
            r.proc.wait(KILL_WAIT_S)
        self.replicas.clear()
        self.router.stop()


def _signal(proc: subprocess.Popen, sig: int) -> None:
    if proc.poll() is None:
        try:
            os.kill(proc.pid, sig)
        except ProcessLookupError:
            pass  # it exited between the poll and the signal


def _get(status: dict, key: str, sub: str) -> float | None:
    value = (status.get(key) or {}).get(sub)
    return float(value) if isinstance(value, int | float) else None


def _write_json(path: Path, payload: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(payload, indent=1))
    tmp.replace(path)


# ----------------------------------------------------------------------------- the loop


def serve(pool: ServingPool, settings: LocalPoolSettings, out: TextIO = sys.stdout) -> int:
    """Run the pool until Ctrl-C (or SIGTERM); 0 after a clean drain, 130 after a second Ctrl-C."""
    workdir = settings.workdir
    workdir.mkdir(parents=True, exist_ok=True)
    jobdir.JobDir(workdir).write_manifest(pool.to_wire())  # what `get` and `status` read
    backend = LocalPoolBackend(pool, settings)
    events = (workdir / "events.jsonl").open("a")
    stops = _Stops()
    spec, status, memory = pool.spec, None, PoolMemory()
    watched = _mtime(settings.manifest)
    table = LiveTable(out, every_s=TABLE_EVERY_S)
    say = table.say

    try:
        with stops:
            url = backend.start()
            say(f"ServingPool {backend.ref.namespace}/{backend.ref.name}: router at {url} (Ctrl-C drains and stops)")
            while not stops.count:
                if (mtime := _mtime(settings.manifest)) != watched:
                    watched = mtime
                    spec = _reload(settings.manifest, spec, say)
                    backend.router.reconfigure(router_config(backend.ref, spec))
                for note in backend.inject():
                    say(note)
                observed = backend.observe(datetime.datetime.now(datetime.timezone.utc))
                result = reconcile_pool(backend.ref, spec, status, observed, memory)
                for action in result.actions:
                    if isinstance(action, Event):
                        events.write(json.dumps({"time": time.time(), "type": action.type, "reason": action.reason, "message": action.message}) + "\n")
                        events.flush()
                        say(f"{action.type:<7} {action.reason}: {action.message}")
                    else:
                        backend.apply(action)
                if result.status != status:
                    _write_json(workdir / "status.json", result.status.to_wire())
                    backend.write_replicas(workdir / "replicas.json")
                status, memory = result.status, result.memory
                table.show(status, observed.replicas)
                time.sleep(settings.poll_seconds)
            say("Draining: the router takes no new requests; running ones finish (Ctrl-C again to stop now)")
            backend.close(spec.rollout.drain_timeout_seconds, hurry=lambda: stops.count > 1)
    finally:
        if backend.replicas:  # an error above
            backend.close(0, hurry=lambda: True)
        events.write(json.dumps({"time": time.time(), "type": str(EventType.NORMAL), "reason": "Stopped", "message": "the pool was stopped"}) + "\n")
        events.close()
        if status is not None:
            _write_json(workdir / "status.json", _stopped(status).to_wire())
            _write_json(workdir / "replicas.json", {"replicas": []})
    say("Stopped")
    return 130 if stops.count > 1 else 0


def _stopped(status: ServingPoolStatus) -> ServingPoolStatus:
    """The status once every replica is gone and the router with them."""
    now = rfc3339(datetime.datetime.now(datetime.timezone.utc))
    conditions = set_condition(status.conditions, PoolConditionType.AVAILABLE, False, str(PoolReason.POOL_STOPPED),
                               "shardwright serve was stopped", now=now, observed_generation=status.observed_generation)
    return status.model_copy(update={"replicas": 0, "ready_replicas": 0, "routable_replicas": 0, "updated_replicas": 0, "roles": [],
                                     "queue_depth": 0, "tokens_per_second": None, "endpoint": None, "phase": PoolPhase.PENDING, "conditions": conditions})


def _mtime(path: Path | None) -> float | None:
    try:
        return path.stat().st_mtime if path else None
    except OSError:
        return None


def _reload(path: Path | None, spec, say):
    """The edited file's spec, or the running one after saying why the edit is not taken."""
    try:
        docs = load_documents(path)
    except InvalidManifest as e:
        say(f"{path}: not applied: {e}")
        return spec
    obj, problems = validate(docs[0])
    if problems or not isinstance(obj, ServingPool):
        say(f"{path}: not applied: " + "; ".join(str(p) for p in problems or ["not a ServingPool"]))
        return spec
    say(f"{path}: changed; applying the new spec")
    return obj.spec


class _Stops:
    """Counts Ctrl-C presses and SIGTERMs instead of raising, while the loop runs."""

    def __init__(self) -> None:
        self.count = 0
        self._previous: dict[int, object] = {}

    def __enter__(self) -> _Stops:
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum, frame) -> None:
        self.count += 1
