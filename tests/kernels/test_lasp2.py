"""LASP-2 on P gloo ranks equals the single-process chunked pass, forward and backward;
the gathered bytes per rank do not depend on the sequence length."""

from __future__ import annotations

import pytest
import torch

from shardwright.kernels import comm

from .test_linear_chunk import TOL, VARIANTS, assert_close, make_inputs, run

GATES = {"gdn": ("g", "beta"), "kda": ("g_k", "beta"), "gdn2": ("g_k", "erase", "write")}


def _shard(x: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """This rank's contiguous piece; torch.tensor_split gives uneven pieces for T % P != 0."""
    return torch.tensor_split(x, comm.world_size(), dim=dim)[comm.rank()]


def _lasp2_rank(variant: str, T: int, with_state: bool, chunk_size: int) -> dict:
    full = make_inputs(variant, T, batch=1)
    names = ["q", "k", "v", *GATES[variant]]
    x = {n: _shard(full[n].detach()).requires_grad_() for n in names}
    x["h0"], x["do"], x["dS"] = full["h0"], _shard(full["do"]), full["dS"]
    o, s = VARIANTS[variant].lasp2(
        *[x[n] for n in names], initial_state=x["h0"] if with_state else None,
        output_final_state=True, chunk_size=chunk_size,
    )
    loss = (o * x["do"]).sum() + (0 if s is None else (s * x["dS"]).sum())
    leaves = [x[n] for n in names] + ([x["h0"]] if with_state else [])
    grads = torch.autograd.grad(loss, leaves, allow_unused=True)
    return {"o": o.detach(), "state": None if s is None else s.detach(),
            **{f"d{n}": g for n, g in zip(names + ["h0"], grads)}}


def _traffic(T: int) -> tuple[int, int, int, int]:
    """Bytes sent and collective calls of one forward, then of its backward."""
    full = make_inputs("kda", T, batch=1)
    args = [_shard(full[n].detach()).requires_grad_() for n in ("q", "k", "v", "g_k", "beta")]
    with comm.traffic() as fwd:
        o, _ = VARIANTS["kda"].lasp2(*args)
    with comm.traffic() as bwd:
        o.sum().backward()
    return fwd.sent, fwd.calls["all_gather"], bwd.sent, bwd.calls["all_reduce"]


def _merge(per_rank: list[dict], with_state: bool) -> dict:
    """Concatenate the ranks' shards back into single-process layout."""
    merged = {name: torch.cat([r[name] for r in per_rank], 1)
              for name in per_rank[0] if name not in ("state", "dh0")}
    merged["state"] = per_rank[-1]["state"]  # the whole sequence's final state: last rank
    assert all(r["state"] is None for r in per_rank[:-1])
    if with_state:
        merged["dh0"] = per_rank[0]["dh0"]  # h0 is read on rank 0 only
        assert all(r["dh0"] is None for r in per_rank[1:])
    return merged


@pytest.mark.parametrize("P", [1, 2, 3, 4], ids=lambda p: f"P={p}")
@pytest.mark.parametrize("variant, T, with_state", [("gdn", 77, True), ("kda", 130, False), ("gdn2", 61, True)],
                         ids=["gdn-T=77-h0", "kda-T=130", "gdn2-T=61-h0"])
def test_lasp2_matches_single_process(dist_pool, P, variant, T, with_state):
    per_rank = dist_pool(P).run(_lasp2_rank, variant, T, with_state, 32)
    x = make_inputs(variant, T, batch=1)
    want = run(VARIANTS[variant].chunk, variant, x, with_state=with_state, chunk_size=32)
    assert_close(_merge(per_rank, with_state), want, TOL)


def test_gathered_bytes_do_not_depend_on_sequence_length(dist_pool):
    P, H, K, V = 3, 2, 16, 24
    short, long = dist_pool(P).run(_traffic, 48), dist_pool(P).run(_traffic, 480)
    state = 1 * H * K * (K + V) * 4  # [E | M] of one rank, fp32
    forward = (P - 1) * state  # one all-gather
    backward = 2 * (P - 1) * state  # one ring all-reduce of the [P, ...] state gradients
    assert short == long == [(forward, 1, backward, 1)] * P
