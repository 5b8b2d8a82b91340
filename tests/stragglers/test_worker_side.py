"""Rank side: the control endpoint that takes new shares, section timing, the live score."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import pytest

from shardwright.workers import data
from shardwright.workers.config import DataConfig
from shardwright.workers.telemetry import Telemetry
from shardwright.workers.timing import SECTIONS, SectionTimer, relative_scores


#: The job's telemetry token the tests' ranks serve with.
TOKEN = "worker-side-token"


def post(port: int, payload) -> int:
    req = urllib.request.Request(f"http://127.0.0.1:{port}/control", data=json.dumps(payload).encode(), method="POST",
                                 headers={"Authorization": f"Bearer {TOKEN}"})
    try:
        with urllib.request.urlopen(req, timeout=2) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def test_control_endpoint_takes_shares_once_and_rejects_nonsense():
    t = Telemetry(job="j", namespace="ns", rank=0, world_size=2, generation=1, layout="dp=2,sp=1", total_steps=10)
    port = t.serve(0, host="127.0.0.1", token=TOKEN)
    try:
        assert post(port, {"dataShares": [0, 1]}) == 400
        assert post(port, {"shares": [1, 1]}) == 400
        assert t.take_shares() is None
        assert post(port, {"dataShares": [1.2, 0.8]}) == 202
        assert t.take_shares() == [1.2, 0.8] and t.take_shares() is None
    finally:
        t.close()


def test_the_operators_json_helper_reads_status_and_posts_shares():
    """``probe.request_json`` is what every backend uses on a rank's telemetry (both ways)."""
    from shardwright.operator.backends.probe import request_json

    t = Telemetry(job="j", namespace="ns", rank=0, world_size=2, generation=4, layout="dp=2,sp=1", total_steps=10)
    port = t.serve(0, host="127.0.0.1", token=TOKEN)
    try:
        assert request_json(f"http://127.0.0.1:{port}/status", token=TOKEN)["generation"] == 4
        assert request_json(f"http://127.0.0.1:{port}/control", {"dataShares": [1.5, 0.5]}, token=TOKEN) == {}  # 202, no body
        assert t.take_shares() == [1.5, 0.5]
        assert request_json(f"http://127.0.0.1:{port}/control", {"dataShares": []}, token=TOKEN) is None  # 400
        assert request_json(f"http://127.0.0.1:{port}/metrics") is None  # not JSON
    finally:
        t.close()
    assert request_json(f"http://127.0.0.1:{port}/status", token=TOKEN) is None  # nobody answers


def test_section_metrics_and_score_gauge_are_exported():
    t = Telemetry(job="j", namespace="ns", rank=1, world_size=2, generation=1, layout="dp=2,sp=1", total_steps=10)
    t.record_sections(dict.fromkeys(SECTIONS, 0.01))
    t.record_score(0.66)
    from prometheus_client import generate_latest

    text = generate_latest(t.registry).decode()
    for name in SECTIONS:
        assert f'shardwright_rank_section_seconds_count{{name="j",namespace="ns",rank="1",section="{name}"}} 1.0' in text
    assert 'shardwright_rank_straggler_score{name="j",namespace="ns",rank="1"} 0.66' in text


def test_timer_stretch_models_a_slower_rank():
    timer = SectionTimer()
    for name in SECTIONS:
        timer.add(name, 1.0)
    timer.busy = 4.0
    timer.stretch(1.5)
    sections, busy = timer.take()
    assert sections == {"data": 1.5, "forward": 1.5, "backward": 1.5, "optimizer": 1.5, "wait": 1.0} and busy == 6.0
    assert timer.take() == (dict.fromkeys(SECTIONS, 0.0), 0.0)


def test_relative_scores():
    assert relative_scores([[1.0, 2.0], [1.0, 1.5], [1.2, 2.0]]) == pytest.approx([1.0, 0.5])


@pytest.mark.parametrize("shares", [None, (1.2, 0.8), (1.0, 1.0, 0.5), (3.0, 1.0, 1.0, 1.0)])
def test_uneven_shares_keep_every_sample_of_the_global_batch_exactly_once(shares):
    dp = len(shares) if shares else 2
    cfg = DataConfig(seq_len=8, global_batch=32, micro_batch=5)
    seen = [i for r in range(dp) for mb in data.rank_slice(7, cfg, r, dp, shares).micro_batches for i in mb]
    assert seen == list(range(7 * 32, 8 * 32))
