"""Exact placement for small labs: a pattern (cutting-stock) integer program solved by HiGHS
(highspy) within a time budget, checked against the greedy's plan.

The greedy (placement.py) is fast and usually optimal on small labs, but its LP bound cannot
tell: integrality (three anti-affine VMs need three hosts; a 4-vCPU VM cannot share a host
whose other half is taken) is what separates them. For up to EXACT_UP_TO VMs this proves the
greedy's plan optimal, finds a cheaper one, or leaves a proven gap.

Model. A pattern is what one host holds: how many VMs of each item (an item is a VM shape
with its count; anti-affine VMs of one shape and the same groups are one item), at most one
member of an anti-affinity group, fitting some host type. Its price is the cheapest type that
holds it, so host types disappear from the program. Only patterns that cannot take one more
VM at that price are kept (covering with >= makes the others useless):
    min sum_p price(p) x_p   st   sum_p count(p, s) x_p >= count(s) for every item s,
                                  sum_p x_p <= max_hosts,   x_p integer >= 0
This is the Gilmore-Gomory model, whose LP relaxation is tight, so HiGHS closes small labs at
the root or in a few nodes. A plan from it may over-cover an item; the extra VMs are dropped.

Pure: no I/O. The pattern enumeration is bounded by a node count; HiGHS is deterministic for
one model and options, and only its wall-clock budget can cut a search short. What such a
search found by then would depend on the machine's load, so it is dropped: the answer is a
proof or nothing, and the plan stays a function of its inputs (a slower machine may merely
prove less).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

EXACT_UP_TO = 30  # VMs; beyond this the greedy's plan stands with the LP bound
BUDGET_S = 0.5
_ABS_GAP = 1e-7  # money per hour: plans differ by far more than this
_MOST_NODES = 100_000  # pattern enumeration steps; more and the lab is left to the greedy


@dataclass(frozen=True)
class Kind:
    cpu: int
    mem: int
    overhead: int
    takes_nested: bool
    cost: float


@dataclass(frozen=True)
class Item:
    cpu: int
    mem: int
    nested: bool
    count: int
    groups: tuple[int, ...] = ()  # anti-affinity groups it belongs to: one member per host


Host = tuple[int, dict[int, int]]  # kind index, item index -> how many


@dataclass(frozen=True)
class Result:
    """A proof: the cheapest plan costs `cost`; `hosts` is it when the start plan was dearer."""

    hosts: list[Host] | None
    cost: float


def solve(
    kinds: Sequence[Kind],
    items: Sequence[Item],
    max_hosts: int | None,
    start_cost: float,
    budget_s: float = BUDGET_S,
) -> Result | None:
    """The optimum, proven; None when it was not proven in time, the lab has too many
    patterns, or HiGHS is not installed."""
    try:
        # the low-level class: highspy.Highs() prints a banner on stdout when first made, before
        # its output can be switched off (and `ravel plan --json` owns stdout)
        from highspy import _core
    except ImportError:
        return None
    began = time.monotonic()
    patterns = _patterns(kinds, items, start_cost)
    if patterns is None:
        return None
    if not patterns:  # nothing beats the start's cost: no pattern is cheap enough
        return Result(None, start_cost)
    h = _core._Highs()
    left = max(0.05, budget_s - (time.monotonic() - began))
    for name, value in (("output_flag", False), ("time_limit", left), ("threads", 1),
                        ("mip_rel_gap", 0.0), ("mip_abs_gap", _ABS_GAP), ("random_seed", 0)):
        h.setOptionValue(name, value)
    if h.passModel(_program(_core, patterns, items, max_hosts)) != _core.HighsStatus.kOk:
        return None
    h.run()
    if h.getModelStatus() == _core.HighsModelStatus.kInfeasible:
        # every plan cheaper than the start would use only these patterns (max_hosts included)
        return Result(None, start_cost)
    if h.getModelStatus() != _core.HighsModelStatus.kOptimal:
        # Cut short by the clock: what it found by then depends on the machine's speed and load,
        # and a plan must not (re-planning an unchanged lab must not move its VMs). Only a proof
        # is used, which any machine that finishes in time reaches alike.
        return None
    value = float(h.getInfo().objective_function_value)
    if value < start_cost - _ABS_GAP:
        return Result(_hosts(patterns, items, list(h.getSolution().col_value)), value)
    return Result(None, start_cost)


@dataclass(frozen=True)
class _Pattern:
    counts: tuple[int, ...]  # per item
    kind: int
    cost: float


def _patterns(kinds: Sequence[Kind], items: Sequence[Item], start_cost: float) -> list[_Pattern] | None:
    """Every maximal pattern cheaper than `start_cost`, or None past _MOST_NODES steps."""
    by_cost = sorted(range(len(kinds)), key=lambda t: (kinds[t].cost, t))
    # a host as dear as the whole start plan is no use: the biggest cheaper type bounds patterns
    cheaper = [k for k in kinds if k.cost < start_cost - _ABS_GAP]
    if not cheaper:
        return []
    big_cpu = max(k.cpu for k in cheaper)
    big_mem = max(k.mem - k.overhead for k in cheaper)  # one VM's worth of overhead at least
    n_items = len(items)
    counts = [0] * n_items
    used_groups: dict[int, int] = {}
    found: list[_Pattern] = []
    nodes = 0

    def cheapest(cpu: int, mem: int, n: int, nested: bool) -> int | None:
        for t in by_cost:
            k = kinds[t]
            if cpu <= k.cpu and mem + n * k.overhead <= k.mem and (k.takes_nested or not nested):
                return t
        return None

    def addable(s: int) -> bool:
        item = items[s]
        return counts[s] < item.count and not any(used_groups.get(g) for g in item.groups)

    def visit(s: int, cpu: int, mem: int, n: int, nested: bool) -> bool:
        nonlocal nodes
        nodes += 1
        if nodes > _MOST_NODES:
            return False
        if s == n_items:
            if n == 0:
                return True
            t = cheapest(cpu, mem, n, nested)
            if t is None or kinds[t].cost >= start_cost - _ABS_GAP:
                return True
            k = kinds[t]
            for r in range(n_items):  # maximal: no VM more fits this kind
                it = items[r]
                if (addable(r) and cpu + it.cpu <= k.cpu and mem + it.mem + (n + 1) * k.overhead <= k.mem
                        and (k.takes_nested or not it.nested)):
                    return True
            found.append(_Pattern(tuple(counts), t, k.cost))
            return True
        item = items[s]
        most = item.count if not item.groups else (0 if any(used_groups.get(g) for g in item.groups) else 1)
        most = min(most, big_cpu // item.cpu, big_mem // max(1, item.mem))
        for c in range(most, -1, -1):  # big first: the maximal patterns come early
            new_cpu, new_mem = cpu + c * item.cpu, mem + c * item.mem
            if c and (new_cpu > big_cpu or new_mem > big_mem):
                continue
            counts[s] = c
            for g in item.groups:
                used_groups[g] = used_groups.get(g, 0) + c
            ok = visit(s + 1, new_cpu, new_mem, n + c, nested or (c > 0 and item.nested))
            for g in item.groups:
                used_groups[g] -= c
            counts[s] = 0
            if not ok:
                return False
        return True

    if not visit(0, 0, 0, 0, False):
        return None
    return found


def _program(core, patterns: list[_Pattern], items: Sequence[Item], max_hosts: int | None):  # type: ignore[no-untyped-def]
    lp = core.HighsLp()
    n = len(patterns)
    lp.num_col_ = n
    lp.col_cost_ = [p.cost for p in patterns]
    lp.col_lower_ = [0.0] * n
    lp.col_upper_ = [float(min(items[s].count // c for s, c in enumerate(p.counts) if c)) for p in patterns]
    lp.integrality_ = [core.HighsVarType.kInteger] * n
    rows: list[tuple[float, float, list[int], list[float]]] = []
    for s, item in enumerate(items):
        cols = [j for j, p in enumerate(patterns) if p.counts[s]]
        rows.append((float(item.count), math.inf, cols, [float(patterns[j].counts[s]) for j in cols]))
    if max_hosts is not None:
        rows.append((-math.inf, float(max_hosts), list(range(n)), [1.0] * n))
    lp.num_row_ = len(rows)
    lp.row_lower_ = [r[0] for r in rows]
    lp.row_upper_ = [r[1] for r in rows]
    starts, index, value = [0], [], []
    for _, _, cols, vals in rows:
        index.extend(cols)
        value.extend(vals)
        starts.append(len(index))
    lp.a_matrix_.format_ = core.MatrixFormat.kRowwise
    lp.a_matrix_.num_col_ = n
    lp.a_matrix_.num_row_ = len(rows)
    lp.a_matrix_.start_ = starts
    lp.a_matrix_.index_ = index
    lp.a_matrix_.value_ = value
    return lp


def _hosts(patterns: list[_Pattern], items: Sequence[Item], values: Sequence[float]) -> list[Host]:
    """One host per pattern use; VMs an item has more slots for than it has are left out."""
    left = [item.count for item in items]
    hosts: list[Host] = []
    for p, x in zip(patterns, values):
        for _ in range(round(x)):
            content = {}
            for s, c in enumerate(p.counts):
                take = min(c, left[s])
                if take:
                    content[s] = take
                    left[s] -= take
            if content:
                hosts.append((p.kind, content))
    return hosts
