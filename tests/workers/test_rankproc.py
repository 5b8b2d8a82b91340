"""A rank's own process, driven through its socket as a Ray actor drives it: jobs in order on
one reused process, answers and exceptions back, stops through the parent, deaths reported
with their code, and no orphan when the parent goes."""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest

from shardwright.workers.rankproc import RankProcess, RankProcessExited

#: Entry points the child imports by name: ``func(config_json, env, stop)`` as the worker's.
JOBS = '''
import os, signal

def echo(config_json, env, stop):
    return {"config": config_json, "rank": os.environ["RANK"], "pid": os.getpid()}

def until_stopped(config_json, env, stop):
    os.kill(os.getppid(), signal.SIGUSR1)  # the test waits for this: the job has started
    return {"stopped": stop.wait(30)}

def fail(config_json, env, stop):
    raise ValueError(f"bad config {config_json}")

def die(config_json, env, stop):
    os._exit(137)
'''
#: Seconds the child may take to notice that its parent's end of the socket closed.
ORPHAN_TIMEOUT_S = 10


@pytest.fixture
def process(tmp_path, monkeypatch):
    (tmp_path / "rankjobs.py").write_text(JOBS)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")])))
    proc = RankProcess("rankjobs")
    yield proc
    proc.close()


def test_jobs_run_in_one_reused_process_with_their_environment(process):
    first = process.run("rankjobs:echo", '{"a": 1}', {"RANK": "0"})
    second = process.run("rankjobs:echo", '{"a": 2}', {"RANK": "3"})
    assert first == {"config": '{"a": 1}', "rank": "0", "pid": process.pid}
    assert second == {"config": '{"a": 2}', "rank": "3", "pid": process.pid}


def test_an_exception_comes_back_as_itself_and_the_process_serves_on(process):
    with pytest.raises(ValueError, match="bad config x"):
        process.run("rankjobs:fail", "x", {})
    assert process.run("rankjobs:echo", "y", {"RANK": "1"})["config"] == "y"


def test_a_stop_request_reaches_the_running_job_and_is_not_left_for_the_next(process):
    started = threading.Event()
    previous = signal.signal(signal.SIGUSR1, lambda *_: started.set())
    try:
        answer: dict = {}
        runner = threading.Thread(target=lambda: answer.update(process.run("rankjobs:until_stopped", "", {})))
        runner.start()
        assert started.wait(30)
        process.request_stop()
        runner.join(30)
        assert answer == {"stopped": True}
        started.clear()
        runner = threading.Thread(target=lambda: answer.update(process.run("rankjobs:until_stopped", "", {})))
        runner.start()
        assert started.wait(30)
        time.sleep(0.5)
        assert runner.is_alive(), "the second job saw the first job's stop"
        process.request_stop()
        runner.join(30)
    finally:
        signal.signal(signal.SIGUSR1, previous)


def test_a_dead_rank_process_is_reported_with_its_exit_code(process):
    with pytest.raises(RankProcessExited, match="exit code 137") as raised:
        process.run("rankjobs:die", "", {})
    assert raised.value.code == 137
    assert not process.alive()


def test_a_killed_rank_process_is_reported_with_its_signal(process):
    process.run("rankjobs:echo", "", {"RANK": "0"})
    os.kill(process.pid, signal.SIGKILL)
    with pytest.raises(RankProcessExited, match="killed by signal 9"):
        process.run("rankjobs:echo", "", {"RANK": "0"})


def test_ctrl_c_in_the_parents_terminal_does_not_reach_the_rank(process):
    assert os.getpgid(process.pid) == process.pid != os.getpgid(0)


def test_the_rank_process_ends_when_its_parent_goes(process):
    process.run("rankjobs:echo", "", {"RANK": "0"})
    process.conn.close()  # what the parent's death does to the socket
    deadline = time.monotonic() + ORPHAN_TIMEOUT_S
    while process.alive() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert process.child.returncode == 1
