"""The rank side of a user command (workers/usercommand.py) and the pod launcher running it:
real child processes, no Ray, no torch."""

from __future__ import annotations

import json
import pickle
import signal
import sys
import threading
import time

import pytest

from shardwright.workers import launch, usercommand
from shardwright.workers.config import CONFIG_ENV, RankEnv, WorkerConfig

from .test_command_spec import job_doc

ENV = RankEnv(rank=1, world_size=2, local_rank=1, master_addr="127.0.0.1", master_port=29999, telemetry_port=31001, token="t0k")


def config(*command: str) -> WorkerConfig:
    from shardwright.operator.api import validate
    from shardwright.operator.controller import JobRef, worker_config
    from shardwright.operator.planner import plan_uniform

    job, _ = validate(job_doc())
    cfg = worker_config(JobRef("u", "default", "/c"), job.spec, plan_uniform(job.spec), 4, None)
    return cfg.model_copy(update={"command": command})


def test_the_program_gets_the_rank_environment_and_its_report_comes_back(tmp_path):
    seen = tmp_path / "env.json"
    code = (
        "import json, os; keys = ['RANK', 'WORLD_SIZE', 'LOCAL_RANK', 'MASTER_ADDR', 'MASTER_PORT', "
        "'SHARDWRIGHT_TELEMETRY_PORT', 'SHARDWRIGHT_TELEMETRY_TOKEN']; "
        f"json.dump({{k: os.environ[k] for k in keys}} | {{'config': os.environ['{CONFIG_ENV}']}}, open({str(seen)!r}, 'w')); "
        "open(os.environ['SHARDWRIGHT_TERMINATION_MESSAGE'], 'w').write(json.dumps({'generation': 4, 'step': 60, 'state': 'complete'}))"
    )
    result = usercommand.main(config(sys.executable, "-c", code), ENV, threading.Event())
    assert result == {"state": "complete", "generation": 4, "step": 60, "metrics": ""}
    got = json.loads(seen.read_text())
    assert {k: got[k] for k in ENV.to_environ()} == ENV.to_environ()
    assert WorkerConfig.model_validate_json(got["config"]).generation == 4


def test_a_failing_program_names_its_exit_code_and_last_lines():
    code = "import sys; [print('line', i) for i in range(30)]; print('bad batch', file=sys.stderr); sys.exit(3)"
    with pytest.raises(usercommand.CommandFailed) as failed:
        usercommand.main(config(sys.executable, "-c", code), ENV, threading.Event())
    e = failed.value
    assert e.code == 3 and not e.died
    assert "exited with code 3" in str(e) and str(e).endswith("line 29\nbad batch")
    assert "line 19" not in str(e)  # only the last TAIL_LINES lines
    again = pickle.loads(pickle.dumps(e))  # Ray hands the exception to the controller pickled
    assert str(again) == str(e) and again.code == 3


def test_a_program_that_does_not_exist_fails_with_127_and_why():
    with pytest.raises(usercommand.CommandFailed) as failed:
        usercommand.main(config("no-such-program-sw"), ENV, threading.Event())
    assert failed.value.code == 127
    assert "cannot start 'no-such-program-sw': No such file or directory" in str(failed.value)


def test_a_stop_request_is_sigterm_and_the_program_exits_on_its_own(tmp_path):
    code = (
        "import signal, sys, time\n"
        "signal.signal(signal.SIGTERM, lambda *_: (print('checkpointing', flush=True), sys.exit(0)))\n"
        "print('ready', flush=True)\n"
        "time.sleep(60)\n"
    )
    stop = threading.Event()
    threading.Timer(1.0, stop.set).start()
    began = time.monotonic()
    result = usercommand.main(config(sys.executable, "-c", code), ENV, stop)
    assert result["state"] == "complete" and time.monotonic() - began < 10


def test_a_program_killed_by_a_signal_counts_as_died():
    code = "import os, signal; os.kill(os.getpid(), signal.SIGKILL)"
    with pytest.raises(usercommand.CommandFailed) as failed:
        usercommand.main(config(sys.executable, "-c", code), ENV, threading.Event())
    assert failed.value.code == -9 and failed.value.died and "killed by signal 9" in str(failed.value)


def test_the_pod_launcher_runs_the_command_once_per_local_rank(tmp_path):
    code = f"import os; open({str(tmp_path)!r} + '/rank-' + os.environ['RANK'], 'w').write(os.environ['LOCAL_RANK'])"
    environ = {
        "RANK": "2", "WORLD_SIZE": "4", "LOCAL_WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29999",
        "SHARDWRIGHT_TELEMETRY_PORT": "31000", CONFIG_ENV: config(sys.executable, "-c", code).model_dump_json(),
        "PATH": "/usr/bin:/bin",
    }
    failing = {**environ, CONFIG_ENV: config(sys.executable, "-c", "import sys; sys.exit(3)").model_dump_json()}
    handler = signal.getsignal(signal.SIGTERM)  # the launcher forwards SIGTERM: put ours back after
    try:
        assert launch.main(environ) == 0
        assert {p.name: p.read_text() for p in tmp_path.iterdir()} == {"rank-2": "0", "rank-3": "1"}
        assert launch.main(failing) == 3
    finally:
        signal.signal(signal.SIGTERM, handler)
