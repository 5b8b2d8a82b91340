"""One rank of a job that runs the user's own program (``spec.workers[].command``).

``main(config, env, stop)`` has the signature of ``train.main``, so the embedded default's
rank actors and the pod launcher (``launch.py``) start it the same way. It runs the command
as a child process with the rank's environment (the torch contract, the telemetry port and
token, ``SHARDWRIGHT_WORKER_CONFIG``), so the program reads everything through
``shardwright.sdk.init()``. Its output passes through to this process's output (the rank's
log) and its last lines are kept: a non-zero exit raises :class:`CommandFailed` with the
code and those lines, the rank's failure reason as a trainer's exception would be.

A stop request (graceful stop, suspend) is SIGTERM to the child, which the SDK turns into
"checkpoint at the next step and exit 0"; after ``STOP_GRACE_S`` it is killed. The child
is killed too when this process dies (``PR_SET_PDEATHSIG``): a rank actor ended with
``ray.kill`` leaves no orphan training on.
"""

from __future__ import annotations

import collections
import contextlib
import ctypes
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

from .config import CONFIG_ENV, TERMINATION_MESSAGE_ENV, RankEnv, WorkerConfig
from .faults import KILL_EXIT_CODE

#: File the SDK leaves its last Prometheus text in (a finished rank's server is gone).
METRICS_ENV = "SHARDWRIGHT_FINAL_METRICS"
#: Lines of the program's output a failure reason carries.
TAIL_LINES = 10
#: Seconds a program has to checkpoint and exit after SIGTERM before it is killed.
STOP_GRACE_S = 60.0
#: prctl option that delivers a signal to the child when its parent dies.
_PR_SET_PDEATHSIG = 1


class CommandFailed(RuntimeError):
    """The user's program ended with a non-zero exit code (or could not start)."""

    def __init__(self, command: tuple[str, ...], code: int, tail: list[str]) -> None:
        self.command, self.code, self.tail = command, code, tail
        shown = "\n".join(tail)
        how = f"exited with code {code}" if code >= 0 else f"was killed by signal {-code}"
        super().__init__(f"command {list(command)} {how}" + (f"; last output:\n{shown}" if shown else ""))

    def __reduce__(self):  # rebuilt from its parts where Ray hands it to the controller
        return CommandFailed, (self.command, self.code, self.tail)

    @property
    def died(self) -> bool:
        """Killed (a signal, or the code an injected kill exits with), not failing on its own:
        the rank the job's failure message names first, before peers that lost it."""
        return self.code < 0 or self.code == KILL_EXIT_CODE


def main(config: WorkerConfig | str, env: RankEnv | None = None, stop: threading.Event | None = None) -> dict[str, Any]:
    """Run the command for this rank; returns its final report (the SDK's termination message)
    and last metrics, as the trainer's ``main`` returns its final status."""
    cfg = WorkerConfig.model_validate_json(config) if isinstance(config, str) else config
    env = env or RankEnv.from_environ()
    assert cfg.command, "usercommand.main needs a config with a command"
    with tempfile.TemporaryDirectory(prefix="shardwright-rank-") as folder:
        report, metrics = Path(folder, "report.json"), Path(folder, "metrics.prom")  # the SDK's last words
        environ = {**child_environ(cfg, env, str(report)), METRICS_ENV: str(metrics)}
        code, tail = run(cfg.command, environ, stop or threading.Event())
        final = report.read_text() if report.exists() else ""
        scraped = metrics.read_text() if metrics.exists() else ""
    if (pod_message := os.environ.get(TERMINATION_MESSAGE_ENV)) and final and env.local_rank == 0:
        with contextlib.suppress(OSError):  # on Kubernetes: the pod's terminationMessagePath
            Path(pod_message).write_text(final)
    if code != 0:
        raise CommandFailed(cfg.command, code, tail)
    with contextlib.suppress(ValueError):
        return {"state": "complete", "metrics": scraped, **json.loads(final)}
    return {"state": "complete", "generation": cfg.generation, "metrics": scraped}


def child_environ(cfg: WorkerConfig, env: RankEnv, report: str) -> dict[str, str]:
    """This process's environment, the rank's contract and the config; the rank's Python comes
    first on PATH, so ``python train.py`` runs with the packages this rank has."""
    out = {**os.environ, **env.to_environ(), CONFIG_ENV: cfg.model_dump_json(), TERMINATION_MESSAGE_ENV: report}
    out["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), out.get("PATH", "")])
    return out


def run(command: tuple[str, ...], environ: dict[str, str], stop: threading.Event) -> tuple[int, list[str]]:
    """Run ``command`` to its end; returns its exit code (negative: the signal) and last lines.
    A program that cannot start returns 127 (a shell's "not found") with the reason."""
    try:
        child = subprocess.Popen(
            list(command), env=environ, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, preexec_fn=_die_with_parent,
        )
    except OSError as e:
        return 127, [f"cannot start {command[0]!r}: {e.strerror or e}"]
    tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
    reader = threading.Thread(target=_pass_through, args=(child.stdout, tail), daemon=True)
    reader.start()
    threading.Thread(target=_stop_on_request, args=(child, stop), daemon=True).start()
    code = child.wait()
    reader.join(timeout=5)
    return code, list(tail)


def _pass_through(stream, tail: collections.deque[str]) -> None:
    """Copy the program's output to ours (the rank's log), keeping the last lines."""
    for raw in iter(stream.readline, b""):
        line = raw.decode(errors="replace")
        sys.stdout.write(line)
        sys.stdout.flush()
        tail.append(line.rstrip("\n"))


def _stop_on_request(child: subprocess.Popen, stop: threading.Event) -> None:
    """SIGTERM the child once a stop is requested; kill it if it is still there after the grace."""
    while child.poll() is None:
        if stop.wait(0.5):
            child.send_signal(signal.SIGTERM)
            try:
                child.wait(timeout=STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                child.kill()
            return


def _die_with_parent() -> None:
    """In the child before exec: SIGKILL it when the process that started it dies, and let
    SIGTERM end it again (the pod launcher's rank processes ignore it)."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
