"""The held-out evaluation (workers/evaluation.py): its figure is the mean token
cross-entropy of the same model over the held-out samples, computed by hand; it does not
change with the data- or sequence-parallel sharding; it is due every intervalSteps and at
the last step; and spec.evaluation refuses a zero interval or sample count by name.
"""

from __future__ import annotations

import math

import pytest
import torch

from shardwright.operator.api import RankState, validate
from shardwright.operator.backends.probe import progress_from_status
from shardwright.workers import data as data_mod
from shardwright.workers.config import (
    CheckpointConfig, DataConfig, EvalConfig, ModelConfig, OptimConfig, ParallelConfig, WorkerConfig, softmax_kernel,
)
from shardwright.workers.evaluation import Evaluator
from shardwright.workers.mixers import SequenceContext
from shardwright.workers.model import Transformer
from tests.controller.driver import Driver, ranks, running, spec
from tests.support.manifests import edited

SAMPLES = 7  # odd: the data-parallel ranks get unequal shares
KINDS = ("softmax", "softmax")


def _config(data: int = 1, sequence: int = 1, steps: int = 25) -> WorkerConfig:
    return WorkerConfig(
        job="eval",
        model=ModelConfig(vocab_size=32, dim=32, layers=len(KINDS), heads=4, kv_heads=2, ffn_dim=64, layer_kinds=KINDS),
        data=DataConfig(seq_len=16, global_batch=4, micro_batch=3),
        optim=OptimConfig(steps=steps, lr=1e-3),
        parallel=ParallelConfig(data=data, sequence=sequence),
        checkpoint=CheckpointConfig(dir="/nonexistent"),
        evaluation=EvalConfig(interval_steps=10, samples=SAMPLES),
    )


def _evaluate(data: int, sequence: int) -> float:
    """On every rank of a ``data * sequence`` world: the evaluation of the seed-0 model."""
    import torch.distributed as dist

    cfg = _config(data, sequence)
    dp_rank, _ = divmod(dist.get_rank() if dist.is_initialized() else 0, sequence)
    ctx = SequenceContext(group=None, degree=sequence, kind=softmax_kernel("auto", KINDS))
    torch.manual_seed(0)
    model = Transformer(cfg.model, ctx)
    return Evaluator(cfg, model, ctx, dp_rank).evaluate(step=10).loss


def test_one_rank_equals_the_mean_token_cross_entropy_by_hand():
    cfg = _config()
    torch.manual_seed(0)
    model = Transformer(cfg.model, SequenceContext(group=None, degree=1, kind="zigzag"))
    model.train()
    result = Evaluator(cfg, model, SequenceContext(group=None, degree=1, kind="zigzag"), 0).evaluate(step=10)
    assert model.training and all(p.grad is None for p in model.parameters())  # left as it was, no gradient

    heldout = data_mod.heldout(cfg.data, cfg.model.vocab_size)
    model.eval()
    nll, tokens = 0.0, 0
    with torch.no_grad():
        for i in range(SAMPLES):  # one sample at a time, log-softmax in float64
            sample = heldout[i]
            logits = model(sample[None, :-1], torch.arange(cfg.data.seq_len)).double()[0]
            logp = logits - logits.exp().sum(-1, keepdim=True).log()
            nll -= logp[torch.arange(cfg.data.seq_len), sample[1:]].sum().item()
            tokens += cfg.data.seq_len
    assert result.tokens == tokens
    assert result.loss == pytest.approx(nll / tokens, abs=1e-6)
    assert result.perplexity == pytest.approx(math.exp(nll / tokens), rel=1e-6)
    assert result.figures() == {"step": 10, "loss": result.loss, "perplexity": result.perplexity}


def test_the_heldout_samples_are_not_training_samples():
    cfg = _config()
    train = data_mod.dataset(cfg.data, cfg.model.vocab_size)
    heldout = data_mod.heldout(cfg.data, cfg.model.vocab_size)
    assert not any(torch.equal(heldout[i], train[i]) for i in range(SAMPLES))


@pytest.mark.parametrize("data, sequence", [(2, 1), (1, 2)], ids=["dp2", "sp2"])
def test_two_ranks_equal_one_rank(dist_pool, data, sequence):
    alone = _evaluate(1, 1)
    losses = dist_pool(data * sequence).run(_evaluate, data, sequence)
    assert losses[0] == losses[1]  # every rank holds the same all-reduced figure
    assert abs(losses[0] - alone) < 1e-6


def test_it_is_due_every_interval_and_at_the_last_step():
    cfg = _config(steps=25)
    torch.manual_seed(0)
    model = Transformer(cfg.model)
    evaluator = Evaluator(cfg, model, SequenceContext(group=None, degree=1, kind="zigzag"), 0)
    assert [s for s in range(1, 26) if evaluator.due(s)] == [10, 20, 25]
    assert evaluator.after(9) is None and evaluator.after(25).step == 25


@pytest.mark.parametrize("field, value, phrase", [
    ("intervalSteps", 0, "must be >= 1 (got 0)"),
    ("samples", 0, "must be >= 1 (got 0)"),
])
def test_a_zero_interval_or_sample_count_is_refused_by_name(field, value, phrase):
    evaluation = {"intervalSteps": 10, "samples": 4, field: value}
    obj, problems = validate(edited({"spec.evaluation": evaluation}))
    assert obj is None
    assert [p.path for p in problems] == [f"spec.evaluation.{field}"]
    assert phrase in problems[0].message


def test_interval_steps_is_required():
    _, problems = validate(edited({"spec.evaluation": {"samples": 4}}))
    assert [p.path for p in problems] == ["spec.evaluation.intervalSteps"]


def test_evaluation_of_file_data_needs_a_heldout_split():
    doc = edited({"spec.data.source": "file", "spec.data.path": "/data/tokens.bin", "spec.evaluation": {"intervalSteps": 10}})
    _, problems = validate(doc)
    assert [(p.path, p.message) for p in problems] == [
        ("spec.data.validation", "spec.evaluation reads held-out data, which source file has only with validation.path")]
    empty = edited({"spec.data.source": "file", "spec.data.path": "/data/tokens.bin", "spec.data.validation": {},
                    "spec.evaluation": {"intervalSteps": 10}})
    assert [p.path for p in validate(empty)[1]] == ["spec.data.validation"]  # fraction 0 holds nothing out
    doc = edited({"spec.data.source": "file", "spec.data.path": "/data/tokens.bin",
                  "spec.data.validation": {"path": "/data/heldout.bin"}, "spec.evaluation": {"intervalSteps": 10}})
    assert validate(doc)[1] == []


def test_the_controller_renders_the_evaluation_and_keeps_the_last_one_across_a_restart():
    """Rank 0's /status ``evaluation`` becomes status.evaluation; a restarted generation that
    has not evaluated yet leaves it, its first evaluation replaces it; malformed is ignored."""
    d = Driver(spec(evaluation={"intervalSteps": 10, "samples": 4}))
    d.start()
    (start,) = d.starts()
    assert (start.config.evaluation.interval_steps, start.config.evaluation.samples) == (10, 4)

    def report(generation: int, step: int, evaluation=None):
        return progress_from_status({"generation": generation, "step": step, "evaluation": evaluation}, generation)

    first = {"step": 10, "loss": 2.5, "perplexity": math.exp(2.5)}
    assert d.tick(5, running(1), report(1, 12, first)).status.evaluation.model_dump() == first
    assert d.tick(6, running(1), report(1, 13, {"step": "x"})).status.evaluation.model_dump() == first
    d.tick(7, ranks(1, RankState.FAILED, RankState.FAILED, exit_code=1, message="boom"))
    d.tick(30, ranks(1, RankState.FAILED, RankState.FAILED, exit_code=1, message="boom"))
    assert d.status.generation == 2
    assert d.tick(31, running(2), report(2, 3)).status.evaluation.model_dump() == first
    second = {"step": 10, "loss": 2.4, "perplexity": math.exp(2.4)}
    assert d.tick(32, running(2), report(2, 10, second)).status.evaluation.model_dump() == second
    assert d.status.to_wire()["evaluation"] == second
