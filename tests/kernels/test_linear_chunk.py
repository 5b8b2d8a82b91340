"""Chunked == token-by-token for every variant: outputs, final states and all gradients.

Also home of the case builders the reduction and LASP-2 tests import: one ``Case`` per
variant knows its gate shapes and its recurrent, chunked and LASP-2 entry points.
"""

from __future__ import annotations

import dataclasses
import doctest
import functools
import importlib
from typing import Callable

import pytest
import torch
import torch.nn.functional as F

from shardwright.kernels import linear as L

B, H, K, V = 2, 2, 16, 24
TOL = 1e-4  # relative RMS error, float32


@dataclasses.dataclass(frozen=True)
class Variant:
    name: str
    recurrent: Callable
    chunk: Callable
    lasp2: Callable | None
    gates: tuple[str, ...]  # gate argument names, in call order after v
    normalise_k: bool = True


VARIANTS = {
    v.name: v
    for v in (
        Variant("gdn", L.recurrent_gated_delta_rule, L.chunk_gated_delta_rule, L.lasp2_gated_delta_rule, ("g", "beta")),
        Variant("kda", L.recurrent_kda, L.chunk_kda, L.lasp2_kda, ("g_k", "beta")),
        Variant("kla", L.recurrent_kla, L.chunk_kla, None, ("g", "eta"), normalise_k=False),
        Variant("gdn2", L.recurrent_gdn2, L.chunk_gdn2, L.lasp2_gdn2, ("g_k", "erase", "write")),
    )
}


def make_inputs(variant: str, T: int, *, seed: int = 0, dtype=torch.float32, batch: int = B) -> dict:
    """Leaf tensors (requires_grad) for one variant: q, k, v, its gates, h0, and the
    cotangents do, dS used to form the loss."""
    gen = torch.Generator().manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=gen, dtype=torch.float64)

    k = randn(batch, T, H, K)
    k = F.normalize(k, dim=-1) if VARIANTS[variant].normalise_k else k * 0.5
    gates = {
        "g": F.logsigmoid(randn(batch, T, H) + 2.0),  # decays around 0.9
        "g_k": F.logsigmoid(randn(batch, T, H, K) + 2.0),
        "beta": torch.sigmoid(randn(batch, T, H)),
        "eta": torch.sigmoid(randn(batch, T, H)),
        "erase": torch.sigmoid(randn(batch, T, H, K)),
        "write": torch.sigmoid(randn(batch, T, H, V)),
    }
    x = dict(q=randn(batch, T, H, K), k=k, v=randn(batch, T, H, V), h0=randn(batch, H, K, V) * 0.5)
    x.update((name, gates[name]) for name in VARIANTS[variant].gates)
    x = {n: t.to(dtype).requires_grad_() for n, t in x.items()}
    x["do"], x["dS"] = randn(batch, T, H, V).to(dtype), randn(batch, H, K, V).to(dtype)
    return x


def run(fn: Callable, variant: str, x: dict, *, with_state: bool, **kwargs) -> dict:
    """Forward + backward; returns o, final state and the gradient of every leaf."""
    leaves = ["q", "k", "v", *VARIANTS[variant].gates] + (["h0"] if with_state else [])
    args = [x[n] for n in ["q", "k", "v", *VARIANTS[variant].gates]]
    o, s = fn(*args, initial_state=x["h0"] if with_state else None, output_final_state=True, **kwargs)
    loss = (o * x["do"]).sum() + (s * x["dS"]).sum()
    grads = torch.autograd.grad(loss, [x[n] for n in leaves])
    return {"o": o.detach(), "state": s.detach(), **{f"d{n}": g for n, g in zip(leaves, grads)}}


def rel_rms(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return ((a - b).pow(2).mean().sqrt() / b.pow(2).mean().sqrt().clamp_min(1e-30)).item()


def assert_close(got: dict, want: dict, tol: float) -> None:
    assert got.keys() == want.keys()
    errors = {name: rel_rms(got[name], want[name]) for name in want}
    assert max(errors.values()) < tol, errors


@functools.lru_cache(maxsize=None)
def _reference(variant: str, T: int, with_state: bool, dtype: torch.dtype) -> dict:
    return run(VARIANTS[variant].recurrent, variant, make_inputs(variant, T, dtype=dtype), with_state=with_state)


@pytest.mark.parametrize("with_state", [False, True], ids=["h0=none", "h0=given"])
@pytest.mark.parametrize("chunk_size", [16, 32, 64], ids=lambda c: f"C={c}")
@pytest.mark.parametrize("T", [77, 130], ids=lambda t: f"T={t}")
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_chunk_matches_recurrent(variant, T, chunk_size, with_state):
    got = run(VARIANTS[variant].chunk, variant, make_inputs(variant, T), with_state=with_state, chunk_size=chunk_size)
    assert_close(got, _reference(variant, T, with_state, torch.float32), TOL)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_against_float64_recurrence(variant):
    want = _reference(variant, 130, True, torch.float64)
    # float32 chunked against the float64 recurrence: the float32 tolerance holds.
    got32 = run(VARIANTS[variant].chunk, variant, make_inputs(variant, 130), with_state=True, chunk_size=32)
    assert_close(got32, want, TOL)
    # float64 chunked: the two forms are the same algebra, so they agree to round-off.
    got64 = run(VARIANTS[variant].chunk, variant, make_inputs(variant, 130, dtype=torch.float64),
                with_state=True, chunk_size=32)
    assert_close(got64, want, 1e-12)


def test_strong_decay_stays_finite():
    """Decay of e^-8 per token: exp(-G) over a 64-token chunk would overflow float32 (e^512);
    the sub-block factorisation never forms it."""
    x = make_inputs("kda", 130)
    with torch.no_grad():
        x["g_k"].fill_(-8.0)
    got = run(L.chunk_kda, "kda", x, with_state=True, chunk_size=64)
    want = run(L.recurrent_kda, "kda", x, with_state=True)
    assert all(torch.isfinite(t).all() for t in got.values())
    # dg is the reverse cumsum of dG, whose terms (+ for row r, - for column i of every
    # exp(G_r - G_i)) nearly cancel under such decay: float32 keeps ~1e-3 of it there.
    dg = got.pop("dg_k"), want.pop("dg_k")
    assert_close(got, want, TOL)
    assert rel_rms(*dg) < 1e-2


def test_short_sequence_and_chunk_larger_than_sequence():
    x = make_inputs("gdn", 5)
    assert_close(run(L.chunk_gated_delta_rule, "gdn", x, with_state=True, chunk_size=64),
                 run(L.recurrent_gated_delta_rule, "gdn", x, with_state=True), TOL)


def test_bfloat16_inputs_run_in_float32():
    x = make_inputs("gdn", 77)
    args = [x[n].detach().bfloat16() for n in ("q", "k", "v", "g", "beta")]
    o, s = L.chunk_gated_delta_rule(*args, output_final_state=True)
    o_ref, s_ref = L.recurrent_gated_delta_rule(*[a.float() for a in args], output_final_state=True)
    assert o.dtype == torch.bfloat16 and s.dtype == torch.float32
    assert rel_rms(o, o_ref) < 1e-2 and rel_rms(s, s_ref) < 1e-5


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda x: L.chunk_gated_delta_rule(x["q"], x["k"], x["v"], x["g"][..., None], x["beta"]), "g must be"),
        (lambda x: L.chunk_gated_delta_rule(x["q"], x["k"][..., :8], x["v"], x["g"], x["beta"]), "q and k"),
        (lambda x: L.chunk_gated_delta_rule(x["q"], x["k"], x["v"], x["g"], x["beta"], chunk_size=24), "multiple of 16"),
        (lambda x: L.chunk_gated_delta_rule(x["q"], x["k"], x["v"], x["g"], x["beta"], initial_state=x["h0"][0]), "initial_state"),
        (lambda x: L.chunk_gated_delta_rule(x["q"][0], x["k"], x["v"], x["g"], x["beta"]), "4-d"),
    ],
    ids=["scalar-g-with-channels", "k-shape", "chunk-size", "state-shape", "q-not-4d"],
)
def test_bad_arguments_raise_clear_errors(call, message):
    with pytest.raises(ValueError, match=message):
        call(make_inputs("gdn", 10))


MODULES = ["gated_delta_rule.naive", "gated_delta_rule.chunk", "kda.naive", "kda.chunk",
           "gdn2.naive", "gdn2.chunk", "kla", "lasp2", "_variants"]


@pytest.mark.parametrize("module", MODULES)
def test_docstring_examples_run(module):
    result = doctest.testmod(importlib.import_module(f"shardwright.kernels.linear.{module}"))
    assert result.failed == 0 and result.attempted > 0
