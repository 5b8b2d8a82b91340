"""Stragglers on the embedded default: real Ray actors, real gloo, ``--inject slow:...``.

A job whose steps take about 0.25 s on an idle host (seqLen 128, globalBatch 192), so that the policy's
minSteps (5) slow steps also span its minSeconds (1 s): on a busy 2-core host one process
is slowed for bursts of half a second, which a flag must not mistake for a straggler
(docs/stragglers.md).
"""

from __future__ import annotations

import json
import re
import statistics
from pathlib import Path

import pytest
import yaml

from shardwright.operator.api import StragglerPolicySpec
from shardwright.operator.controller import StepTiming
from shardwright.operator.controller.stragglers import per_sample, step_scores
from tests.runner.test_local_run import EXAMPLE, RESIZE_TOLERANCE, curve, shardwright_run, status

pytestmark = pytest.mark.slow

SLOW_FROM = 20
#: How much slower the injected straggler is. On this host one step's busy time moves by
#: 10-15% against the others', so a 1.5x rank (12% past the default threshold of 0.75)
#: measures 1.3-1.7x step by step: in one of nine 1.5x runs a step of its first five scored
#: above the threshold and the flag came 6 steps later. 2x stays clear of that, so the
#: latency bound below holds in every run.
FACTOR = 2.0
#: Steps from the first slowed step to the flag (the policy's minSteps is 5: the flag comes
#: with the 5th slow step at best, i.e. 4 steps after the first), not counting disturbed
#: steps (every rank slow at once: the detector judges no rank by them).
MAX_LATENCY = 5
CLEAN_SEEDS = (0, 1, 2)
CLEAN_STEPS = 100
#: Global batch of the slowed jobs: long enough steps that minSteps outlasts minSeconds.
BATCH = 192


def straggler_job(tmp: Path, *, replicas: int = 2, steps: int = 35, action: str = "report", seed: int = 0, elastic: bool = False, batch: int = BATCH) -> Path:
    doc = yaml.safe_load(EXAMPLE.read_text())
    spec = doc["spec"]
    spec["workers"][0]["replicas"] = replicas
    spec["training"].update(steps=steps, seed=seed)
    spec["data"].update(seqLen=128, globalBatch=batch, microBatch=batch // 2, seed=seed)
    spec["checkpoint"] = {"intervalSteps": 20, "keep": 2}
    spec["stragglerPolicy"] = {"action": action}
    if elastic:
        spec["elastic"] = {"minReplicas": 1, "maxReplicas": replicas}
    path = tmp / f"job-{replicas}-{steps}-{action}-{seed}-{batch}.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def events(workdir: Path) -> list[dict]:
    return [json.loads(line) for line in (workdir / "events.jsonl").read_text().splitlines()]


def detections(workdir: Path) -> dict[int, int]:
    """Flagged rank -> step it was flagged at, from the StragglerDetected events."""
    out = {}
    for e in events(workdir):
        if e["reason"] == "StragglerDetected":
            rank, step = map(int, re.search(r"Rank (\d+) .* at step (\d+)", e["message"]).groups())
            out.setdefault(rank, step)
    return out


def step_log(workdir: Path) -> list[dict]:
    return [json.loads(line) for line in (workdir / "steps.jsonl").read_text().splitlines()]


def disturbed(lines: list[dict], first: int, last: int) -> int:
    """Steps ``first..last`` on which every rank was slow at once (the default policy's
    judgement, from the step log's busy seconds): a busy host's, not a straggler's."""
    timings = [StepTiming(line["step"], tuple(line["rankCompute"]), tuple(line["rankWait"]), tuple(line["samples"]), tuple(line["rankBusy"])) for line in lines]
    scores = step_scores([per_sample(t) for t in timings], StragglerPolicySpec())
    return sum(score is None for line, score in zip(lines, scores) if first <= line["step"] <= last)


def test_clean_runs_flag_nothing(tmp_path):
    # Shorter steps (globalBatch 32, about 0.1 s): minSeconds then asks for 10 slow steps.
    runs = []
    for seed in CLEAN_SEEDS:
        run = shardwright_run(straggler_job(tmp_path, steps=CLEAN_STEPS, action="rebalance", seed=seed, batch=32), tmp_path / f"wd-{seed}")
        assert run.returncode == 0, run.stdout
        runs.append(tmp_path / f"wd-{seed}")
    assert sum(len(step_log(wd)) for wd in runs) >= 300
    for wd in runs:
        assert detections(wd) == {}, [e["message"] for e in events(wd) if "Straggler" in e["reason"]]
        assert status(wd)["stragglers"] == [] and status(wd).get("dataShares") is None


@pytest.mark.parametrize("replicas, rank", [(2, 1), (4, 2)], ids=["2-ranks", "4-ranks"])
def test_slow_rank_is_flagged_within_a_few_steps_and_no_other(tmp_path, replicas, rank):
    wd = tmp_path / "wd"
    run = shardwright_run(straggler_job(tmp_path, replicas=replicas), wd, "--inject", f"slow:rank={rank}:factor={FACTOR}:step={SLOW_FROM}")
    assert run.returncode == 0, run.stdout
    found = detections(wd)
    assert list(found) == [rank], found
    latency = found[rank] - SLOW_FROM
    skipped = disturbed(step_log(wd), SLOW_FROM, found[rank])
    print(f"{replicas} ranks: rank {rank} flagged at step {found[rank]}, {latency} steps after its first slow step, {skipped} disturbed")
    assert 0 <= latency <= MAX_LATENCY + skipped
    st = status(wd)
    assert [s["rank"] for s in st["stragglers"]] == [rank]
    degraded = next(c for c in st["conditions"] if c["type"] == "Degraded")
    assert degraded["status"] == "True" and degraded["reason"] == "StragglerDetected"
    metrics = (wd / "metrics.prom").read_text()
    assert f'shardwright_rank_straggler_score{{name="tiny-train",namespace="default",rank="{rank}"}}' in metrics
    assert 'section="backward"' in metrics and 'section="wait"' in metrics


def critical_path(lines: list[dict], first: int, last: int) -> float:
    """Median over steps of the longest busy time of any rank: the step time on one core per rank."""
    return statistics.median(max(line["rankBusy"]) for line in lines if first <= line["step"] <= last)


def balance(lines: list[dict], first: int, last: int) -> float:
    """Median over steps of (best step time for the ranks' speeds measured in that step) /
    (the step's critical path). 1.0: no rank waits. Judged within each step, so the host's
    load, which moves every rank's time together, cancels out."""
    def one(line):
        speed = sum(n / b for n, b in zip(line["samples"], line["rankBusy"]))
        return sum(line["samples"]) / speed / max(line["rankBusy"])
    return statistics.median(one(line) for line in lines if first <= line["step"] <= last)


def test_rebalance_regains_throughput_with_the_same_samples(tmp_path):
    factor, wd, steps = FACTOR, tmp_path / "wd", 50
    job = straggler_job(tmp_path, steps=steps, action="rebalance")
    baseline = shardwright_run(job, tmp_path / "clean")
    assert baseline.returncode == 0, baseline.stdout
    run = shardwright_run(job, wd, "--inject", f"slow:rank=1:factor={factor}:step={SLOW_FROM}")
    assert run.returncode == 0, run.stdout
    assert "StragglerMitigated" in [e["reason"] for e in events(wd)]
    lines = step_log(wd)
    switched = next(line["step"] for line in lines if line["samples"] != [BATCH // 2] * 2)
    assert sum(lines[-1]["samples"]) == BATCH and lines[-1]["samples"][0] > lines[-1]["samples"][1]
    # After the flag: the next controller poll posts the shares (a step or two), rank 0 sends
    # them with its next step's facts, and every rank switches when those are back.
    assert switched - SLOW_FROM <= MAX_LATENCY + 5
    # Same global batch, same samples every step: only the order of float sums changes.
    reference, got = curve(tmp_path / "clean"), curve(wd)
    worst = max(abs(reference[s] - got[s]) for s in reference)
    assert sorted(got) == sorted(reference) and worst < RESIZE_TOLERANCE, worst
    assert all(got[s] == reference[s] for s in range(1, switched))  # bit-identical before the switch
    before, slowed, after = balance(lines, 5, SLOW_FROM - 1), balance(lines, SLOW_FROM + 1, switched - 1), balance(lines, switched + 3, steps)
    regained = (after - slowed) / (before - slowed)
    paths = [critical_path(lines, *span) for span in ((5, SLOW_FROM - 1), (SLOW_FROM + 1, switched - 1), (switched + 3, steps))]
    # The critical path across time moves with the host's load too; printed, not asserted.
    # Two ranks, one F times slower: at best the step takes 2 / (1 + 1/F) of the clean one.
    print(f"balance: clean {before:.2f}, slowed {slowed:.2f}, rebalanced {after:.2f}: {regained:.0%} of what is regainable; "
          f"critical path {' / '.join(f'{p * 1e3:.0f}' for p in paths)} ms (best {paths[0] * 2e3 / (1 + 1 / factor):.0f})")
    # The shares come from the speeds measured around the flag on a shared host, so what is
    # regained varies from run to run (78.5 % in one CI run); without rebalancing it is 0 %.
    assert slowed < 0.9 and regained >= 0.7


def test_replace_continues_without_the_slow_rank(tmp_path):
    wd = tmp_path / "wd"
    run = shardwright_run(straggler_job(tmp_path, steps=60, action="replace", elastic=True), wd, "--inject", f"slow:rank=1:factor={FACTOR}:step={SLOW_FROM}")
    assert run.returncode == 0, run.stdout
    st = status(wd)
    assert st["phase"] == "Complete" and st["generation"] == 2 and st["worldSize"] == 1 and st["restarts"] == 0
    said = [e["message"] for e in events(wd) if e["reason"] == "StragglerMitigated"]
    assert any("set to" in m for m in said) and any("runs without it" in m for m in said)
    assert "dropped from the rank budget" in run.stdout
    assert sorted(curve(wd)) == list(range(1, 61))
