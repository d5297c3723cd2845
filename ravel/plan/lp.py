"""A certified lower bound from a small covering LP, by the simplex method on its dual.

The planner's bound is the LP relaxation min c.x st A.x >= b, x >= 0 (x: how many hosts of
each type, c: their prices, rows: vCPUs, memory, and counts of hosts that anti-affinity and
max_hosts impose). Its dual, max b.y st A^T.y <= c, y >= 0, has the origin as a feasible
start because every price is positive, so no phase one is needed. Any y that is feasible for
the dual bounds every plan from below (weak duality); the y found is checked and, should
rounding have pushed it out, scaled back in, so the bound returned is valid whatever the
floating point did. A few rows by about a hundred host types: a millisecond or so.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

_EPS = 1e-12
_MAX_PIVOTS = 10_000  # Bland's rule cannot cycle; this only bounds a numerical accident


def covering_bound(costs: Sequence[float], rows: Sequence[tuple[Sequence[float], float]]) -> float:
    """A value no x >= 0 with a.x >= rhs for every (a, rhs) in `rows` can cost less than.

    `rows[r][0][t]` is what one host of type t contributes to row r. Returns 0.0 when no row
    asks for anything, and math.inf when the rows cannot be met at all.
    """
    y = _dual_optimum(costs, rows)
    if y is None:
        return math.inf
    y = [max(0.0, v) for v in y]
    scale = 1.0
    for t, cost in enumerate(costs):
        used = math.fsum(y[r] * a[t] for r, (a, _) in enumerate(rows))
        if used > cost:
            scale = min(scale, cost / used)
    return max(0.0, scale * math.fsum(y[r] * rhs for r, (_, rhs) in enumerate(rows)))


def _dual_optimum(
    costs: Sequence[float], rows: Sequence[tuple[Sequence[float], float]]
) -> list[float] | None:
    """max b.y st A^T y <= c, y >= 0 in dictionary form; None when unbounded (primal infeasible).

    Variables 0..R-1 are y, R..R+T-1 the slacks of the T type constraints. Each dictionary row
    says basic = const + sum(coef[j] * nonbasic[j]).
    """
    n_rows, n_types = len(rows), len(costs)
    nonbasic = list(range(n_rows))
    basic = [n_rows + t for t in range(n_types)]
    table = [[costs[t]] + [-rows[r][0][t] for r in range(n_rows)] for t in range(n_types)]
    objective = [0.0] + [rows[r][1] for r in range(n_rows)]
    for _ in range(_MAX_PIVOTS):
        # Bland: the entering variable of smallest index among those that improve
        entering = min(
            (j for j in range(n_rows) if objective[j + 1] > _EPS),
            key=lambda j: nonbasic[j],
            default=None,
        )
        if entering is None:
            break
        col = entering + 1
        leaving, best = None, math.inf
        for i, row in enumerate(table):
            if row[col] < -_EPS:
                ratio = row[0] / -row[col]
                if ratio < best - _EPS or (abs(ratio - best) <= _EPS and basic[i] < basic[leaving]):
                    leaving, best = i, ratio
        if leaving is None:
            return None
        _pivot(table, objective, leaving, col)
        basic[leaving], nonbasic[entering] = nonbasic[entering], basic[leaving]
    y = [0.0] * n_rows
    for i, var in enumerate(basic):
        if var < n_rows:
            y[var] = table[i][0]
    return y


def _pivot(table: list[list[float]], objective: list[float], leaving: int, col: int) -> None:
    row = table[leaving]
    pivot = row[col]
    # solve the leaving row for the entering variable: it becomes that variable's row
    new = [-v / pivot for v in row]
    new[col] = 1.0 / pivot
    table[leaving] = new
    for i, other in enumerate(table):
        if i != leaving and other[col] != 0.0:
            factor = other[col]
            other[col] = 0.0
            for j, v in enumerate(new):
                other[j] += factor * v
    factor = objective[col]
    objective[col] = 0.0
    for j, v in enumerate(new):
        objective[j] += factor * v
