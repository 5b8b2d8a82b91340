"""The in-place LSE merge is exact, symmetric, and never produces NaN on empty rows."""

import math

import pytest
import torch

from shardwright.kernels.attention.merge import merge_

INF = float("inf")


def _attend(scores, values):
    return torch.softmax(scores, -1) @ values, torch.logsumexp(scores, -1)


def _merged(a, b):
    out, lse = a[0].float().clone(), a[1].float().clone()
    merge_(out, lse, *b)
    return out, lse


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_merge_of_halves_equals_attention_over_all_keys(dtype):
    gen = torch.Generator().manual_seed(0)
    scores, values = torch.randn(2, 5, 12, generator=gen), torch.randn(2, 12, 3, generator=gen)
    full = _attend(scores, values)
    a = _attend(scores[..., :4], values[:, :4])
    b = _attend(scores[..., 4:], values[:, 4:])
    out, lse = _merged((a[0].to(dtype), a[1]), (b[0].to(dtype), b[1]))
    tol = 1e-6 if dtype == torch.float32 else 1e-2
    torch.testing.assert_close(out, full[0], atol=tol, rtol=0)
    torch.testing.assert_close(lse, full[1], atol=1e-6, rtol=0)
    torch.testing.assert_close(_merged(b, a)[0], _merged(a, b)[0], atol=1e-6, rtol=0)


def test_empty_rows_take_the_other_side_or_stay_empty():
    out_a, out_b = torch.zeros(3, 2), torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]])
    lse_a = torch.tensor([-INF, 0.5, -INF])
    lse_b = torch.tensor([0.25, -INF, -INF])
    out, lse = _merged((out_a, lse_a), (out_b, lse_b))
    assert not out.isnan().any() and not lse.isnan().any()
    assert out.tolist() == [[1.0, 2.0], [0.0, 0.0], [0.0, 0.0]]
    assert lse.tolist() == [0.25, 0.5, -INF]


def test_large_lse_gap_is_stable():
    one, zero = torch.ones(1, 1), torch.zeros(1, 1)
    out, lse = _merged((one, torch.tensor([1e4])), (zero, torch.tensor([0.0])))
    assert out.item() == 1.0 and lse.item() == 1e4
    out, lse = _merged((one, torch.tensor([0.0])), (one, torch.tensor([0.0])))
    assert out.item() == 1.0 and lse.item() == pytest.approx(math.log(2))


def test_merge_updates_a_view_in_place():
    out, lse = torch.zeros(4, 2), torch.full((4,), -INF)
    merge_(out[2:], lse[2:], torch.ones(2, 2), torch.zeros(2))
    assert out.tolist() == [[0, 0], [0, 0], [1, 1], [1, 1]] and lse[:2].isneginf().all()
