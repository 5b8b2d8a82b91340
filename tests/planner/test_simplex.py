"""The serving mix's LP solver against worked examples and against vertex enumeration."""

from __future__ import annotations

import itertools
import random

import numpy as np
import pytest

from shardwright.operator.planner.simplex import minimize


def flat(solved):
    value, x = solved
    return [value, *x]


def test_worked_examples():
    assert flat(minimize([-1, -1], [([1, 2], "<=", 4), ([3, 1], "<=", 6)])) == pytest.approx([-2.8, 1.6, 1.2])
    assert flat(minimize([1, 1], [([1, 1], ">=", 2), ([1, -1], "==", 0)])) == pytest.approx([2.0, 1.0, 1.0])
    assert flat(minimize([1, 2], [([1, 1], "==", 3), ([2, 2], "==", 6)])) == pytest.approx([3.0, 3.0, 0.0])  # a redundant row
    assert flat(minimize([1, 1], [([-1, 0], "<=", -2), ([0, 1], ">=", -5)])) == pytest.approx([2.0, 2.0, 0.0])  # negative right-hand sides


def test_infeasible_is_none_and_a_malformed_row_is_refused():
    assert minimize([1], [([1], "<=", 1), ([1], ">=", 2)]) is None
    with pytest.raises(ValueError, match="row 0: 1 coefficients for 2 variables"):
        minimize([1, 1], [([1], "<=", 1)])


def vertex_optimum(c, rows):
    """The optimum by brute force: every vertex of {rows, x >= 0} in 3 variables."""
    planes = [(np.array(a, float), b) for a, _, b in rows] + [(np.eye(3)[i], 0.0) for i in range(3)]
    best = None
    for trio in itertools.combinations(planes, 3):
        a = np.array([p[0] for p in trio])
        if abs(np.linalg.det(a)) < 1e-9:
            continue
        x = np.linalg.solve(a, [p[1] for p in trio])
        ok = all(x >= -1e-7) and all(
            (s == "<=" and np.dot(r, x) <= b + 1e-7) or (s == ">=" and np.dot(r, x) >= b - 1e-7) or (s == "==" and abs(np.dot(r, x) - b) < 1e-7)
            for r, s, b in rows
        )
        if ok and (best is None or np.dot(c, x) < best):
            best = float(np.dot(c, x))
    return best


@pytest.mark.parametrize("seed", range(60))
def test_random_bounded_programs_match_vertex_enumeration(seed):
    rng = random.Random(seed)
    c = [rng.uniform(-2, 3) for _ in range(3)]
    rows = [([1.0, 1.0, 1.0], "<=", rng.uniform(1, 10))]  # bounded
    for _ in range(rng.randint(1, 4)):
        rows.append(([rng.uniform(-3, 3) for _ in range(3)], rng.choice(["<=", ">=", "=="]) if rng.random() < 0.9 else "<=", rng.uniform(-4, 6)))
    expected = vertex_optimum(c, rows)
    got = minimize(c, rows)
    if expected is None:
        assert got is None
    else:
        value, x = got
        assert value == pytest.approx(expected, abs=1e-6) and np.dot(c, x) == pytest.approx(value, abs=1e-6)
        assert all(v >= -1e-9 for v in x)
