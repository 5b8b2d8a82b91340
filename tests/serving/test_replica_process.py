"""``python -m shardwright.workers.serve`` as its own process: starts, serves, stops on SIGTERM."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

from shardwright.workers.serve.config import EngineConfig, ServeConfig

from . import http
from .models import tiny_config

START_TIMEOUT = 120  # torch's import on a busy 2-core machine


def test_replica_process_serves_and_stops_on_sigterm(tmp_path):
    port_file = tmp_path / "port"
    config = ServeConfig(model=tiny_config(vocab=260), model_name="tiny", port=0, port_file=str(port_file),
                         engine=EngineConfig(max_model_len=64, num_blocks=16, block_size=4))
    (tmp_path / "serve.json").write_text(config.model_dump_json())
    proc = subprocess.Popen([sys.executable, "-m", "shardwright.workers.serve", "--config", str(tmp_path / "serve.json")],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while not port_file.exists() or not port_file.read_text():
            assert proc.poll() is None, proc.stdout.read()
            assert time.monotonic() < deadline, "the replica did not start"
            time.sleep(0.1)
        url = f"http://127.0.0.1:{port_file.read_text()}"
        assert http.get(f"{url}/health") == (200, {"status": "ok"})
        status, body = http.post(f"{url}/v1/completions", {"model": "tiny", "prompt": "ab", "max_tokens": 3, "ignore_eos": True})
        assert status == 200 and body["usage"]["completion_tokens"] == 3
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
        assert f"serving tiny at {url}" in proc.stdout.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
