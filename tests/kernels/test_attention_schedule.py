"""Causal work balance, counted in unmasked query-key pairs on the ring's own schedule."""

import pytest

from shardwright.kernels.attention.schedule import block, work_per_rank

N_LOCAL = 64


def _imbalance(layout, size):
    work = work_per_rank(layout, True, size, N_LOCAL)
    return max(work) / (sum(work) / size)


@pytest.mark.parametrize("size", [4, 8], ids=lambda p: f"P{p}")
def test_zigzag_balances_causal_work(size):
    assert _imbalance("zigzag", size) <= 1.05


@pytest.mark.parametrize("size", [2, 4, 8], ids=lambda p: f"P{p}")
def test_contiguous_causal_is_unbalanced(size):
    """Rank r does r full blocks plus half a diagonal one: max/mean -> (2P-1)/P, the
    pair-exact form of 2P/(P+1), which counts the diagonal block as a whole block."""
    n = N_LOCAL
    diagonal = n * (n + 1) // 2
    exact = (diagonal + (size - 1) * n * n) / (diagonal + (size - 1) * n * n / 2)
    assert _imbalance("contiguous", size) == pytest.approx(exact)
    assert 2 * size / (size + 1) < exact <= (2 * size - 1) / size


@pytest.mark.parametrize("layout", ["zigzag", "contiguous"])
@pytest.mark.parametrize("size", [1, 2, 3, 4, 8], ids=lambda p: f"P{p}")
def test_schedule_covers_exactly_the_causal_pairs(layout, size):
    """Summed over ranks the schedule computes N(N+1)/2 pairs: nothing missing or twice."""
    total = size * N_LOCAL
    assert sum(work_per_rank(layout, True, size, N_LOCAL)) == total * (total + 1) // 2
    assert sum(work_per_rank(layout, False, size, N_LOCAL)) == total * total


def test_zigzag_blocks():
    assert block("zigzag", True, 2, 2, 8).causal
    assert block("zigzag", True, 2, 1, 8).kv == slice(0, 4)
    assert block("zigzag", True, 1, 2, 8).q == slice(4, 8)
    assert block("contiguous", True, 1, 2, 8) is None
