"""Packed sequences: with ``segments`` every linear-attention kernel equals running each
document alone through the token-by-token reference (outputs, final state of the last
document, gradients of every input), on one rank and under LASP-2."""

from __future__ import annotations

import pytest
import torch

from shardwright.kernels import linear as L

from .test_lasp2 import _merge, _shard
from .test_linear_chunk import TOL, VARIANTS, assert_close, make_inputs, rel_rms, run

# Document lengths per batch row (the last run of row 0 stands for trailing padding).
# Row 0 at C=16: shorter than a chunk, one exactly filling chunk 1, length 1, several chunks.
# Row 1: other boundaries, a length-1 document first, one chunk-long but unaligned.
LENGTHS = ([5, 11, 16, 1, 37, 10], [1, 30, 16, 3, 30])
# T = 60 on 2 ranks (30 | 30) or 3 (20 | 20 | 20). Row 0: a document starts exactly at the
# boundary 30 (P=2) and 20 (P=3), one crosses 40 (P=3). Row 1: one crosses 30 (P=2), one
# spans ranks 0-2 (P=3), so the state passes through a whole rank.
LASP2_LENGTHS = ([7, 13, 10, 15, 1, 14], [45, 15])


def segments_of(lengths) -> torch.Tensor:
    """int64 [B, T] document ids (non-decreasing, not starting at 0)."""
    return torch.stack([torch.repeat_interleave(torch.arange(len(n)) + 3, torch.tensor(n)) for n in lengths])


def per_document(variant: str, x: dict, segments: torch.Tensor, with_state: bool) -> dict:
    """The reference: each document alone through the recurrence (``h0`` feeds each row's
    first document only); the final state is that of each row's last document."""
    v = VARIANTS[variant]
    names = ["q", "k", "v", *v.gates]
    loss, rows, states = 0.0, [], []
    for b, row in enumerate(segments):
        bounds = [0, *((row[1:] != row[:-1]).nonzero().flatten() + 1).tolist(), len(row)]
        outs = []
        for i, (s, e) in enumerate(zip(bounds[:-1], bounds[1:])):
            h0 = x["h0"][b:b + 1] if with_state and i == 0 else None
            o, S = v.recurrent(*[x[n][b:b + 1, s:e] for n in names], initial_state=h0, output_final_state=True)
            loss = loss + (o * x["do"][b:b + 1, s:e]).sum()
            outs.append(o)
        rows.append(torch.cat(outs, 1))
        states.append(S)
        loss = loss + (S * x["dS"][b:b + 1]).sum()
    leaves = names + (["h0"] if with_state else [])
    grads = torch.autograd.grad(loss, [x[n] for n in leaves])
    return {"o": torch.cat(rows).detach(), "state": torch.cat(states).detach(),
            **{f"d{n}": g for n, g in zip(leaves, grads)}}


@pytest.mark.parametrize("with_state", [False, True], ids=["h0=none", "h0=given"])
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_documents_match_each_document_alone(variant, with_state):
    segments = segments_of(LENGTHS)
    x = make_inputs(variant, segments.shape[1])
    want = per_document(variant, x, segments, with_state)
    v = VARIANTS[variant]
    assert_close(run(v.recurrent, variant, x, with_state=with_state, segments=segments), want, TOL)
    for chunk_size in (16, 32):
        got = run(v.chunk, variant, x, with_state=with_state, chunk_size=chunk_size, segments=segments)
        assert_close(got, want, TOL)


def test_strong_decay_with_documents_stays_exact():
    """Decay e^-8 per token sends the chunked core to its pairwise decay branch; the masks
    act on that branch too (a huge-negative-gate reset would lose float32 precision here)."""
    segments = segments_of(LENGTHS)
    x = make_inputs("kda", segments.shape[1])
    with torch.no_grad():
        x["g_k"].fill_(-8.0)
    got = run(L.chunk_kda, "kda", x, with_state=True, chunk_size=32, segments=segments)
    want = per_document("kda", x, segments, with_state=True)
    assert all(torch.isfinite(t).all() for t in got.values())
    dg = got.pop("dg_k"), want.pop("dg_k")  # near-cancelling terms, as in test_linear_chunk
    assert_close(got, want, TOL)
    assert rel_rms(*dg) < 1e-2


@pytest.mark.parametrize(
    "segments",
    [torch.zeros(2, 79, dtype=torch.int64), torch.zeros(80, dtype=torch.int64), torch.zeros(2, 80, dtype=torch.int32),
     [[0] * 80] * 2],
    ids=["length", "no-batch", "int32", "list"],
)
@pytest.mark.parametrize("fn", ["recurrent_gated_delta_rule", "chunk_gated_delta_rule", "lasp2_gated_delta_rule"])
def test_bad_segments_raise_the_rule(fn, segments):
    x = make_inputs("gdn", 80)
    with pytest.raises(ValueError, match=r"segments must be an int64 tensor \[B, T\] = \(2, 80\) of document ids"):
        getattr(L, fn)(x["q"], x["k"], x["v"], x["g"], x["beta"], segments=segments)


def _lasp2_documents_rank(variant: str, with_state: bool) -> dict:
    """One rank's LASP-2 pass on its shard of the LASP2_LENGTHS inputs (batch 2)."""
    segments = segments_of(LASP2_LENGTHS)
    full = make_inputs(variant, segments.shape[1])
    names = ["q", "k", "v", *VARIANTS[variant].gates]
    x = {n: _shard(full[n].detach()).requires_grad_() for n in names}
    h0 = full["h0"] if with_state else None
    o, s = VARIANTS[variant].lasp2(
        *[x[n] for n in names], initial_state=h0, output_final_state=True, chunk_size=16,
        segments=_shard(segments),
    )
    loss = (o * _shard(full["do"])).sum() + (0 if s is None else (s * full["dS"]).sum())
    leaves = [x[n] for n in names] + ([h0] if with_state else [])
    grads = torch.autograd.grad(loss, leaves, allow_unused=True)
    return {"o": o.detach(), "state": None if s is None else s.detach(),
            **{f"d{n}": g for n, g in zip(names + ["h0"], grads)}}


@pytest.mark.parametrize("P", [2, 3], ids=lambda p: f"P={p}")
@pytest.mark.parametrize("variant, with_state", [("gdn", True), ("kda", False), ("gdn2", True)],
                         ids=["gdn-h0", "kda", "gdn2-h0"])
def test_lasp2_documents_match_each_document_alone(dist_pool, P, variant, with_state):
    per_rank = dist_pool(P).run(_lasp2_documents_rank, variant, with_state)
    segments = segments_of(LASP2_LENGTHS)
    want = per_document(variant, make_inputs(variant, segments.shape[1]), segments, with_state)
    assert_close(_merge(per_rank, with_state), want, TOL)
