"""A small dense linear program solver: the serving mix's relaxations (``servingmix.py``).

``minimize(c, rows)`` solves min c·x subject to rows ``(a, sense, b)`` (``a·x <= b``,
``>= b`` or ``== b``) and x >= 0, by the two-phase tableau simplex with Bland's rule (no
cycling). Problems here have tens of variables and rows, so a dense tableau in plain
floats is enough, and the operator needs no numerical library for it.
"""

from __future__ import annotations

from collections.abc import Sequence

EPS = 1e-9

Row = tuple[Sequence[float], str, float]


def minimize(c: Sequence[float], rows: Sequence[Row]) -> tuple[float, list[float]] | None:
    """(optimal value, x), or None when no x satisfies the rows. Every problem solved here
    is bounded (costs and variables are non-negative)."""
    n = len(c)
    # Every row as a·x + s = b with b >= 0: a slack for <=, a surplus for >=, an artificial
    # variable wherever the row has no slack that can start in the basis.
    table: list[list[float]] = []
    basis: list[int] = []
    extra = sum(sense != "==" for _, sense, _ in rows)
    artificial = [i for i, (_, sense, b) in enumerate(rows) if (sense == "<=") != (b >= 0) or sense == "=="]
    width = n + extra + len(artificial)
    slack, art = n, n + extra
    for i, (a, sense, b) in enumerate(rows):
        if len(a) != n or sense not in ("<=", ">=", "=="):
            raise ValueError(f"row {i}: {len(a)} coefficients for {n} variables, sense {sense!r}")
        row = [float(v) for v in a] + [0.0] * (width - n) + [float(b)]
        if sense != "==":
            row[slack] = 1.0 if sense == "<=" else -1.0
            own = slack
            slack += 1
        if b < 0:
            row = [-v for v in row]
        if i in artificial:
            row[art] = 1.0
            own = art
            art += 1
        table.append(row)
        basis.append(own)
    first = n + extra
    if artificial:  # phase 1: drive the artificial variables out
        phase1 = [0.0] * first + [1.0] * len(artificial)
        if _run(table, basis, phase1, width) > EPS:
            return None
        for i, var in enumerate(basis):  # an artificial left at 0: pivot it out where possible
            if var >= first:
                col = next((j for j in range(first) if abs(table[i][j]) > EPS), None)
                if col is not None:
                    _pivot(table, basis, i, col)
        # Rows whose artificial variable stayed basic are redundant (all zero otherwise).
        kept = [i for i, var in enumerate(basis) if var < first]
        table, basis = [table[i][:first] + table[i][width:] for i in kept], [basis[i] for i in kept]
        width = first
    value = _run(table, basis, [float(v) for v in c] + [0.0] * (width - n), width)
    x = [0.0] * n
    for i, var in enumerate(basis):
        if var < n:
            x[var] = table[i][-1]
    return value, x


def _run(table: list[list[float]], basis: list[int], cost: list[float], width: int) -> float:
    """Simplex iterations on ``table`` for ``cost`` (one per column); the optimal value.
    The reduced costs are a row of their own, pivoted with the others."""
    basic = [cost[var] for var in basis]
    reduced = [cost[j] - sum(b * row[j] for b, row in zip(basic, table)) for j in range(width)]
    reduced.append(-sum(b * row[-1] for b, row in zip(basic, table)))
    while True:
        enter = next((j for j in range(width) if reduced[j] < -EPS), None)
        if enter is None:
            return -reduced[-1]
        ratios = [(table[i][-1] / table[i][enter], basis[i], i) for i in range(len(table)) if table[i][enter] > EPS]
        if not ratios:
            raise ValueError("unbounded linear program")
        _, _, leave = min(ratios)  # smallest ratio, ties to the smallest basic variable (Bland)
        _pivot(table, basis, leave, enter)
        factor = reduced[enter]
        reduced = [v - factor * p for v, p in zip(reduced, table[leave])]


def _pivot(table: list[list[float]], basis: list[int], row: int, col: int) -> None:
    pivot = table[row][col]
    table[row] = [v / pivot for v in table[row]]
    for i, other in enumerate(table):
        if i != row and abs(other[col]) > EPS:
            factor = other[col]
            table[i] = [v - factor * p for v, p in zip(other, table[row])]
    basis[row] = col
