"""Placement: which host types to rent and which VM runs on which host.

This is variable-sized two-dimensional bin packing (vCPU, memory) with costs, solved by a
greedy guided by the linear-programming relaxation:

1. The LP relaxation over the allowed types (at most two types at its optimum) gives the lower
   bound a plan is measured against, and dual prices: what a vCPU and a MiB are worth.
2. VMs of identical shape are grouped with counts, so filling a host costs O(#shapes); with
   hundreds of distinct shapes, classes of near-equal VMs stand in for them.
3. Host by host, the type whose best fill is worth most per unit of cost is opened, and that
   fill repeated while it stays the same; prices are re-solved for the VMs still unplaced, so
   the mix of types follows the mix of VMs left. A fill makes a host's vCPU and memory run
   out together.
4. VMs under anti-affinity are either placed one by one first and their hosts topped up, or
   the lab is packed as if they were free and they then take slots of their own shape on
   distinct hosts; both are tried.
5. Every host is downsized to the cheapest type that still holds it; on small plans, hosts
   are also merged when one type holds both for no more, and emptied or shrunk by moving
   their VMs into the room left on others.
6. Small labs get a few greedy variants; first-fit decreasing is computed too; the cheapest
   plan wins, so a plan is never dearer than the FFD baseline. Over max_hosts, hosts are
   merged down to the limit, or the biggest types filled first.
7. Labs of up to exact.EXACT_UP_TO VMs are then solved exactly (exact.py, HiGHS, a time
   budget): a proven optimum replaces the plan if cheaper and becomes its bound.

Every host type keeps a reserve for the host itself (reserve.py) in both modes; performance
mode uses only types where KVM reaches the guests when the allowed types include some.

Everything here is pure and deterministic: no I/O, no randomness, no iteration over sets.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Literal

from ravel.errors import PlacementError
from ravel.plan.catalogue import Catalogue, HostType
from ravel.plan import exact
from ravel.plan.lp import covering_bound

# Memory that QEMU itself holds per VM, on top of the guest's RAM. Measured by
# bench/memory_bench.py on the real Debian 12 guest published through ravel (cloud-init, TCG,
# 1 and 4 GiB, after boot and after CPU-bound work): 104-106 MiB resident outside the guest's RAM
# block, of which 64 MiB is the translation cache (full: tb-size caps it) and ~42 MiB device
# models, libraries and heap (docs/capacity.md). TCG: that plus ~20 % for guests with more
# devices and vCPUs. KVM has no translation cache: the other part with the same headroom (it
# cannot run here; the published per-VM overheads of QEMU/KVM, tens of MiB, agree).
QEMU_OVERHEAD_MIB = {"tcg": 128, "kvm": 64}

# Every host keeps a reserve for itself in both modes (its OS, plumbing, page tables): a fixed
# part and a share of its memory, per catalogue (reserve.py); performance mode keeps vCPUs too.

Optimize = Literal["cost", "performance"]

# Relative margin a cheaper-per-value but smaller host must win by before it is preferred to a
# bigger one: bigger hosts pack better and mean fewer machines to boot.
_PREFER_BIGGER = 1e-3
# Slack that absorbs floating-point rounding so a provably tight bound never exceeds the cost.
_BOUND_SLACK = 1e-9
# How strongly a host's fill prefers VMs shaped like its free room over big VMs (exponent on
# the cosine of the angle between them). Tuned on the benchmark mixes: 1 (plain dot product)
# leaves lopsided hosts, >= 16 starves later hosts of the VMs they need to balance.
_ALIGN = 6
# Weight of a nested VM in the fill of a host that may hold it while some allowed type may
# not: the VMs with the fewest places to go take those places first.
_SCARCE_FIRST = 2.0
# The extra greedy runs (other fill exponents) are made while #shapes x #VMs stays below this;
# the greedy costs O(#shapes) per host filled, so this keeps them to small and regular labs.
_VARIANTS_WORK = 250_000
# More distinct VM shapes than this are packed as size classes (see _greedy).
_MOST_SHAPES = 256
# Plans with at most this many hosts get the (quadratic) pairwise merge, and, when over
# max_hosts, the (cubic) merging down to the limit.
_MERGE_UP_TO = 64
_MERGE_DOWN_UP_TO = 150


@dataclass(frozen=True)
class Demand:
    name: str
    cpus: int
    memory_mib: int
    nested: bool = False


@dataclass(frozen=True)
class Request:
    demands: tuple[Demand, ...]
    optimize: Optimize = "cost"
    cpu_overcommit: float = 2.0  # cost mode only; performance mode never overcommits
    host_types: tuple[str, ...] = ()  # allowed type names; () = the whole catalogue
    # each tuple names VMs that must run on pairwise distinct hosts
    anti_affinity: tuple[tuple[str, ...], ...] = ()
    max_hosts: int | None = None
    # wall-clock budget of the exact solver (exact.py) on labs of up to EXACT_UP_TO VMs; 0: none
    exact_s: float = exact.BUDGET_S


@dataclass(frozen=True)
class PlacedHost:
    name: str
    type: HostType
    accel: str  # "kvm" | "tcg"
    vms: tuple[str, ...]
    reserve_cpus: int = 0  # kept for the host itself (performance mode)
    reserve_mib: int = 0  # kept for the host itself (both modes)


@dataclass(frozen=True)
class Placement:
    hosts: tuple[PlacedHost, ...]
    cost_per_hour: float
    lower_bound_per_hour: float
    vm_host: Mapping[str, str] = field(hash=False)
    # the exact solver (exact.py) proved that no valid plan is cheaper
    optimal: bool = False

    @property
    def ratio(self) -> float:
        """Cost over lower bound: 1.0 is provably optimal."""
        return self.cost_per_hour / self.lower_bound_per_hour if self.lower_bound_per_hour else 1.0


# ---------------------------------------------------------------------------------------------
# The problem as the algorithms see it


@dataclass(frozen=True)
class _Kind:
    """A host type under one request: what guests may use of it and what each VM costs it."""

    index: int
    host: HostType
    cpu: int  # vCPU guests may use (overcommit applied, reserve removed)
    mem: int  # MiB guests and their QEMUs may use
    overhead: int  # MiB of QEMU per VM
    takes_nested: bool
    cost: float
    reserve_cpu: int = 0
    reserve_mem: int = 0

    def fits(self, cpu: int, mem: int, nested: bool) -> bool:
        return (
            (self.takes_nested or not nested)
            and cpu <= self.cpu
            and mem + self.overhead <= self.mem
        )


@dataclass
class _Shape:
    """Bulk (unconstrained) VMs that are interchangeable for packing."""

    cpu: int
    mem: int
    nested: bool
    names: list[str]


@dataclass
class _Problem:
    request: Request
    kinds: list[_Kind]
    shapes: list[_Shape]
    singles: list[Demand]  # VMs under anti-affinity, largest first
    conflicts: dict[str, set[str]]  # membership tests only, never iterated
    order: dict[str, int]  # demand name -> position in the request
    nested_only_on_nested: bool
    # performance mode left out the allowed types where guests would run under TCG
    kvm_only: bool = False


class _Bin:
    """A host being filled: totals for capacity checks, counts per shape, named singles."""

    __slots__ = ("counts", "cpu", "kind", "mem", "n", "n_nested", "names")

    def __init__(self, kind: _Kind) -> None:
        self.kind = kind
        self.cpu = 0
        self.mem = 0  # guest RAM only; QEMU overhead depends on the kind and is added on demand
        self.n = 0
        self.n_nested = 0
        self.counts: dict[int, int] = {}
        self.names: list[str] = []

    @property
    def nested(self) -> bool:
        return self.n_nested > 0

    def free(self) -> tuple[int, int]:
        return self.kind.cpu - self.cpu, self.kind.mem - self.mem - self.n * self.kind.overhead

    def room(self, cpu: int, mem: int, nested: bool) -> int:
        """How many more VMs of this shape fit."""
        if nested and not self.kind.takes_nested:
            return 0
        free_cpu, free_mem = self.free()
        return max(0, min(free_cpu // cpu, free_mem // (mem + self.kind.overhead)))

    def add(self, cpu: int, mem: int, nested: bool, count: int = 1) -> None:
        """Count `count` VMs of this shape in (negative: out)."""
        self.cpu += cpu * count
        self.mem += mem * count
        self.n += count
        self.n_nested += count if nested else 0

    def absorb(self, other: _Bin) -> None:
        self.cpu += other.cpu
        self.mem += other.mem
        self.n += other.n
        self.n_nested += other.n_nested
        for shape, count in other.counts.items():
            self.counts[shape] = self.counts.get(shape, 0) + count
        self.names.extend(other.names)

    def add_shape(self, index: int, shape: _Shape, count: int) -> None:
        """Add `count` VMs of a bulk shape (negative: take them out)."""
        self.add(shape.cpu, shape.mem, shape.nested, count)
        left = self.counts.get(index, 0) + count
        if left:
            self.counts[index] = left
        else:
            del self.counts[index]

    def add_single(self, demand: Demand) -> None:
        self.add(demand.cpus, demand.memory_mib, demand.nested)
        self.names.append(demand.name)

    def remove_single(self, demand: Demand) -> None:
        self.add(demand.cpus, demand.memory_mib, demand.nested, -1)
        self.names.remove(demand.name)


def _prepare(request: Request, catalogue: Catalogue) -> _Problem:
    _check_request(request)
    kinds, kvm_only = _kinds(request, catalogue)
    order = {d.name: i for i, d in enumerate(request.demands)}
    nested_only = any(k.host.nested_virt for k in kinds)
    for demand in request.demands:
        if not any(k.fits(demand.cpus, demand.memory_mib, demand.nested) for k in kinds):
            raise _no_fit(demand, kinds, request, kvm_only)
    conflicts: dict[str, set[str]] = {}
    for group in request.anti_affinity:
        for name in group:
            conflicts.setdefault(name, set()).update(n for n in group if n != name)
    singles = [d for d in request.demands if d.name in conflicts]
    big_cpu = max(k.cpu for k in kinds)
    big_mem = max(k.mem for k in kinds)
    singles.sort(key=lambda d: (-(d.cpus / big_cpu + d.memory_mib / big_mem), order[d.name]))
    return _Problem(
        request=request,
        kinds=kinds,
        shapes=_shapes(d for d in request.demands if d.name not in conflicts),
        singles=singles,
        conflicts=conflicts,
        order=order,
        nested_only_on_nested=nested_only,
        kvm_only=kvm_only,
    )


def _check_request(request: Request) -> None:
    seen: set[str] = set()
    for demand in request.demands:
        if not demand.name:
            raise PlacementError("a VM has an empty name", dimension="name")
        if demand.name in seen:
            raise PlacementError(
                f'vm "{demand.name}" is listed twice', vm=demand.name, dimension="name"
            )
        seen.add(demand.name)
        if demand.cpus < 1:
            raise PlacementError(
                f'vm "{demand.name}" asks for {demand.cpus} vCPU; at least 1 is needed',
                vm=demand.name,
                dimension="cpus",
            )
        if demand.memory_mib < 1:
            raise PlacementError(
                f'vm "{demand.name}" asks for {demand.memory_mib} MiB; at least 1 is needed',
                vm=demand.name,
                dimension="memory",
            )
    if request.optimize not in ("cost", "performance"):
        raise PlacementError(
            f"optimize must be cost or performance, not {request.optimize!r}", dimension="optimize"
        )
    if not (math.isfinite(request.cpu_overcommit) and request.cpu_overcommit > 0):
        raise PlacementError(
            f"cpu_overcommit must be a positive number, not {request.cpu_overcommit!r}",
            dimension="cpus",
        )
    if request.max_hosts is not None and request.max_hosts < 1 and request.demands:
        raise PlacementError(
            f"max_hosts is {request.max_hosts}; at least 1 host is needed", dimension="hosts"
        )
    for group in request.anti_affinity:
        members: set[str] = set()
        for name in group:
            if name not in seen:
                raise PlacementError(
                    f'anti-affinity names vm "{name}", which the lab does not have',
                    vm=name,
                    dimension="anti_affinity",
                )
            if name in members:
                raise PlacementError(
                    f'anti-affinity group lists vm "{name}" twice',
                    vm=name,
                    dimension="anti_affinity",
                )
            members.add(name)


def _kinds(request: Request, catalogue: Catalogue) -> tuple[list[_Kind], bool]:
    """The allowed host types as the planner sees them, and whether performance mode kept only
    those where KVM reaches the guests."""
    names = list(dict.fromkeys(request.host_types)) or catalogue.names()
    usable = []
    for host in [catalogue.get(name) for name in names]:
        cpu, mem = _capacity(host, request, catalogue)
        if cpu >= 1 and mem > QEMU_OVERHEAD_MIB[host.accel]:  # else too small for its own reserve
            usable.append((host, cpu, mem))
    if not usable:
        raise PlacementError(
            f"no allowed host type has room for guests in {request.optimize} mode "
            f"(allowed: {', '.join(names)})",
            dimension="host_type",
            hint="allow larger host types",
        )
    # Performance mode: under TCG every VM, not only a guest hypervisor, runs about ten times
    # slower than under KVM, so where some allowed type gives KVM only such types are used.
    kvm_only = request.optimize == "performance" and any(h.nested_virt for h, _, _ in usable)
    kvm_only = kvm_only and not all(h.nested_virt for h, _, _ in usable)
    if kvm_only:
        usable = [u for u in usable if u[0].nested_virt]
    # nested VMs go only where hardware virtualization reaches guests, if any type offers it;
    # otherwise anywhere, since QEMU's TCG emulates SVM for them
    nested_available = any(host.nested_virt for host, _, _ in usable)
    kinds = [
        _Kind(
            index=index,
            host=host,
            cpu=cpu,
            mem=mem,
            overhead=QEMU_OVERHEAD_MIB[host.accel],
            takes_nested=host.nested_virt or not nested_available,
            cost=host.hourly_cost,
            reserve_cpu=host.cpus - cpu if request.optimize == "performance" else 0,
            reserve_mem=host.memory_mib - mem,
        )
        for index, (host, cpu, mem) in enumerate(usable)
    ]
    return kinds, kvm_only


def _capacity(host: HostType, request: Request, catalogue: Catalogue) -> tuple[int, int]:
    mem = host.memory_mib - catalogue.reserve_mib(host)
    if request.optimize == "performance":
        return host.cpus - catalogue.reserve.cpus, mem
    # VM vCPUs are whole numbers, so the usable capacity is the floor; the epsilon keeps
    # 3 x 1.1 = 3.3000000000000003 and 10 x 0.3 = 2.9999999999999996 on the intended side.
    return math.floor(host.cpus * request.cpu_overcommit + 1e-9), mem


def _shapes(demands: Iterable[Demand]) -> list[_Shape]:
    by_shape: dict[tuple[int, int, bool], _Shape] = {}
    for d in demands:
        key = (d.cpus, d.memory_mib, d.nested)
        if key not in by_shape:
            by_shape[key] = _Shape(d.cpus, d.memory_mib, d.nested, [])
        by_shape[key].names.append(d.name)
    # largest first, so ties in the fill favour the VMs that are hardest to place later
    return sorted(by_shape.values(), key=lambda s: (-s.mem, -s.cpu, s.nested))


# ---------------------------------------------------------------------------------------------
# Errors that say what ran out (nomad's AllocsFit is the model)


def _no_fit(demand: Demand, kinds: list[_Kind], request: Request, kvm_only: bool) -> PlacementError:
    candidates = [k for k in kinds if k.takes_nested or not demand.nested]

    def shortfall(kind: _Kind) -> tuple[float, int]:
        cpu_short = max(0, demand.cpus - kind.cpu) / demand.cpus
        mem_short = max(0, demand.memory_mib + kind.overhead - kind.mem) / demand.memory_mib
        return max(cpu_short, mem_short), -(kind.cpu + kind.mem)

    nearest = min(candidates, key=shortfall)
    need_mem = demand.memory_mib + nearest.overhead
    gaps = {  # dimension -> (shortfall, demand, unit)
        "cpus": (demand.cpus - nearest.cpu, demand.cpus, "vCPU"),
        "memory": (need_mem - nearest.mem, need_mem, "MiB"),
    }
    short = {dim: gap for dim, gap in gaps.items() if gap[0] > 0}
    dimension = max(short, key=lambda dim: short[dim][0] / short[dim][1])
    restricted = " nested-capable" if demand.nested and len(candidates) < len(kinds) else ""
    message = (
        f'vm "{demand.name}" needs {demand.cpus} vCPU + {need_mem} MiB '
        f"(incl. {nearest.overhead} MiB hypervisor overhead); "
        f"nearest allowed{restricted} type {nearest.host.name} offers {_offer(nearest, request)}: "
        + " and ".join(f"{dim} short by {gap} {unit}" for dim, (gap, _, unit) in short.items())
    )
    hints = ["allow a larger host type", "or make the VM smaller"]
    if dimension == "cpus" and request.optimize == "performance":
        hints.append("or use optimize: cost, which may overcommit vCPUs")
    if restricted:
        hints.append("(nested VMs only go on host types with hardware nested virtualization)")
    if kvm_only:
        hints.append("(performance mode uses only host types where KVM reaches the guests; "
                     "optimize: cost may run VMs under TCG instead)")
    return PlacementError(
        message,
        vm=demand.name,
        dimension=dimension,
        nearest=nearest.host.name,
        hint=" ".join(hints),
    )


def _offer(kind: _Kind, request: Request) -> str:
    host = kind.host
    mem = f"{kind.mem} MiB ({host.memory_mib} - {kind.reserve_mem} reserved for the host)"
    if request.optimize == "performance":
        return f"{kind.cpu} vCPU ({host.cpus} - {kind.reserve_cpu} reserved for the host) and {mem}"
    return f"{kind.cpu} vCPU ({host.cpus} x overcommit {request.cpu_overcommit}) and {mem}"


def _too_many_hosts(problem: _Problem, best: int) -> PlacementError:
    request, kinds = problem.request, problem.kinds
    cpu = sum(d.cpus for d in request.demands)
    mem = sum(
        d.memory_mib + _least_overhead(kinds, d.cpus, d.memory_mib, d.nested)
        for d in request.demands
    )
    big_cpu, big_mem = max(k.cpu for k in kinds), max(k.mem for k in kinds)
    need = max(
        math.ceil(cpu / big_cpu),
        math.ceil(mem / big_mem),
        max((len(g) for g in request.anti_affinity), default=0),
    )
    biggest = max(kinds, key=lambda k: (k.cpu / big_cpu + k.mem / big_mem, -k.index))
    return PlacementError(
        f"the lab needs {best} hosts (no fewer than {need} with the allowed types) "
        f"but max_hosts is {request.max_hosts}",
        dimension="hosts",
        nearest=biggest.host.name,
        hint="raise max_hosts, allow larger host types, or use optimize: cost",
    )


# ---------------------------------------------------------------------------------------------
# Lower bound


def lower_bound(request: Request, catalogue: Catalogue) -> float:
    """A cost per hour that no valid plan can beat."""
    return _bound(_prepare(request, catalogue))


def _bound(problem: _Problem) -> float:
    demands = problem.request.demands
    if not demands:
        return 0.0
    kinds = problem.kinds
    facts: dict[tuple[int, int, bool], tuple[int, float]] = {}  # per VM shape, computed once
    for d in demands:
        key = (d.cpus, d.memory_mib, d.nested)
        if key not in facts:
            facts[key] = (_least_overhead(kinds, *key), min(k.cost for k in kinds if k.fits(*key)))

    def lp_bound(vms: list[Demand], allowed: list[_Kind]) -> float:
        # each VM costs its host at least the smallest overhead of any type that can hold it,
        # so this memory total never exceeds what a real plan consumes
        cpu = sum(d.cpus for d in vms)
        mem = sum(d.memory_mib + facts[(d.cpus, d.memory_mib, d.nested)][0] for d in vms)
        return _lp(_frontier(allowed), cpu, mem)[0]

    cheapest = {d.name: facts[(d.cpus, d.memory_mib, d.nested)][1] for d in demands}
    bounds = [lp_bound(list(demands), kinds)]
    nested = [d for d in demands if d.nested]
    if nested and problem.nested_only_on_nested:
        # nested VMs alone must be covered by the nested-capable types
        bounds.append(lp_bound(nested, [k for k in kinds if k.host.nested_virt]))
    # some host must hold the VM that is dearest to house
    bounds.append(max(cheapest.values()))
    # an anti-affinity group needs one host per member, each at least able to hold it
    for group in problem.request.anti_affinity:
        bounds.append(math.fsum(cheapest[name] for name in group))
    if problem.request.anti_affinity or problem.request.max_hosts is not None:
        # the bounds above each see one constraint; the LP sees them all at once
        bounds.append(_counting_bound(problem, {k: v[0] for k, v in facts.items()}))
    return max(bounds) * (1 - _BOUND_SLACK)


# Shapes that not every host type can hold get a row "at least one host that can" in the
# counting LP; more distinct shapes than this and only the most demanding ones do.
_SHAPE_ROWS = 32


def _counting_bound(problem: _Problem, overhead: Mapping[tuple[int, int, bool], int]) -> float:
    """The LP relaxation over numbers of hosts per type with every constraint at once: vCPUs and
    memory (of all VMs, and of nested VMs on the types that take them), one host per member
    of an anti-affinity group among the types that can hold it, a host for every VM shape,
    and at most max_hosts hosts. Solved exactly on its dual (lp.py), so its value is a valid
    bound; it is what makes e.g. three anti-affine VMs cost three hosts."""
    kinds, request = problem.kinds, problem.request
    demands = request.demands
    rows: list[tuple[list[float], float]] = []

    def resources(vms: list[Demand], only_nested: bool) -> None:
        cpu = sum(d.cpus for d in vms)
        mem = sum(d.memory_mib + overhead[(d.cpus, d.memory_mib, d.nested)] for d in vms)
        take = [not only_nested or k.takes_nested for k in kinds]
        rows.append(([k.cpu if t else 0.0 for k, t in zip(kinds, take)], cpu))
        rows.append(([k.mem if t else 0.0 for k, t in zip(kinds, take)], mem))

    resources(list(demands), False)
    nested = [d for d in demands if d.nested]
    if nested and problem.nested_only_on_nested:
        resources(nested, True)

    def fit_set(d: Demand) -> tuple[bool, ...]:
        return tuple(k.fits(d.cpus, d.memory_mib, d.nested) for k in kinds)

    def hosts_row(fits: tuple[bool, ...], count: int) -> None:
        rows.append(([1.0 if f else 0.0 for f in fits], count))

    shape_sets = sorted({fit_set(d) for d in demands}, key=lambda f: (sum(f), f))
    for fits in shape_sets[:_SHAPE_ROWS]:
        hosts_row(fits, 1)
    for group in request.anti_affinity:
        # Hall's condition: members whose possible types all lie within one member's need as
        # many distinct hosts among that member's types
        sets = [fit_set(demands[problem.order[name]]) for name in group]
        for fits in sorted(set(sets)):
            inside = sum(all(f or not o for f, o in zip(fits, other)) for other in sets)
            hosts_row(fits, inside)
        hosts_row(tuple(any(col) for col in zip(*sets)), len(group))
    if request.max_hosts is not None:
        rows.append(([-1.0] * len(kinds), -request.max_hosts))
    return covering_bound([k.cost for k in kinds], rows)


def _least_overhead(kinds: list[_Kind], cpu: int, mem: int, nested: bool) -> int:
    return min(k.overhead for k in kinds if k.fits(cpu, mem, nested))


_Point = tuple[float, float]  # what one unit of money buys of a host type: (vCPU, MiB)


def _frontier(kinds: list[_Kind]) -> list[_Point]:
    """The only host types an optimal LP mix can use, as capacity per unit of cost.

    A covering LP mixes points on the upper-right boundary of the convex hull of these
    points; that boundary usually holds two to four of them, so LPs over it are cheap.
    """
    points = sorted({(k.cpu / k.cost, k.mem / k.cost) for k in kinds})
    hull: list[_Point] = []
    for p in points:  # upper hull, left to right (Andrew's monotone chain)
        while len(hull) >= 2 and _cross(hull[-2], hull[-1], p) >= 0:
            hull.pop()
        hull.append(p)
    top = max(range(len(hull)), key=lambda i: (hull[i][1], hull[i][0]))
    return hull[top:]


def _cross(o: _Point, a: _Point, b: _Point) -> float:
    return (a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0])


def _lp(frontier: list[_Point], cpu: float, mem: float) -> tuple[float, tuple[float, float]]:
    """min sum(x) st sum(x*point) >= (cpu, mem), x >= 0: the least money covering the demand.

    With two covering constraints an optimal vertex uses one point or two, so enumerating
    singles and pairs is exact. Returns the optimum and its dual prices: what a vCPU and a
    MiB are worth, in money, when the cheapest mix of hosts supplies them.
    """
    best = (math.inf, (0.0, 0.0))
    for ac, am in frontier:
        money = max(cpu / ac, mem / am)
        if money < best[0]:
            best = (money, (1 / ac, 0.0) if cpu / ac >= mem / am else (0.0, 1 / am))
    for i, (ac, am) in enumerate(frontier):
        for bc, bm in frontier[i + 1 :]:
            det = ac * bm - bc * am
            if det == 0:
                continue
            xa = (cpu * bm - bc * mem) / det
            xb = (ac * mem - am * cpu) / det
            if xa >= 0 and xb >= 0 and xa + xb < best[0]:
                best = (xa + xb, (max(0.0, (bm - am) / det), max(0.0, (ac - bc) / det)))
    return best


# ---------------------------------------------------------------------------------------------
# The LP-guided greedy

_Fill = dict[int, int]  # shape index -> how many VMs of that shape go on one host


@dataclass
class _Valuation:
    values: list[float]  # per shape
    ceiling: list[float]  # per kind: the best score a host of that kind could reach
    ranked: list[_Kind]  # best ceiling first


class _Packer:
    """Fills hosts from the pool of bulk VMs, shape by shape, for one problem."""

    def __init__(self, problem: _Problem, align: float) -> None:
        kinds, shapes = problem.kinds, problem.shapes
        self.align = align
        self.shapes = shapes
        self.least = [_least_overhead(kinds, s.cpu, s.mem, s.nested) for s in shapes]
        self.eligible = [
            [i for i, s in enumerate(shapes) if k.fits(s.cpu, s.mem, s.nested)] for k in kinds
        ]
        scarce = any(not k.takes_nested for k in kinds)
        self.weight = [_SCARCE_FIRST if scarce and s.nested else 1.0 for s in shapes]
        self.avail = [len(s.names) for s in shapes]
        self.cache: dict[int, _Fill] = {}  # kind index -> its last full-host fill

    def fill(self, kind: _Kind, cpu_free: int, mem_free: int) -> _Fill:
        """Fill one host so that its vCPU and memory run out together.

        Sizes are taken relative to the host. The next shape is the one pointing most nearly
        the way of the room still free, bigger shapes winning among near-equals (score:
        length x cos(angle)^_ALIGN); it takes half of the room left for it, so a host fills
        in O(log) steps per shape rather than VM by VM.
        """
        shapes, avail, overhead, align = self.shapes, self.avail, kind.overhead, self.align
        unit = {}
        for i in self.eligible[kind.index]:
            a, b = shapes[i].cpu / kind.cpu, (shapes[i].mem + overhead) / kind.mem
            length = math.hypot(a, b)
            unit[i] = (a / length, b / length, length * self.weight[i])
        take: _Fill = {}
        cand = [
            i
            for i in unit
            if avail[i] and shapes[i].cpu <= cpu_free and shapes[i].mem + overhead <= mem_free
        ]
        while cand:
            x, y = cpu_free / kind.cpu, mem_free / kind.mem
            length = math.hypot(x, y)
            x, y = x / length, y / length
            pick, pick_score = cand[0], -1.0
            for i in cand:
                a, b, size = unit[i]
                score = size * (a * x + b * y) ** align
                if score > pick_score:
                    pick, pick_score = i, score
            shape = shapes[pick]
            mem = shape.mem + overhead
            room = min(cpu_free // shape.cpu, mem_free // mem)
            count = min((room + 1) // 2, avail[pick] - take.get(pick, 0))
            take[pick] = take.get(pick, 0) + count
            cpu_free -= count * shape.cpu
            mem_free -= count * mem
            cand = [
                i
                for i in cand
                if avail[i] > take.get(i, 0)
                and shapes[i].cpu <= cpu_free
                and shapes[i].mem + overhead <= mem_free
            ]
        return take

    def full_host(self, kind: _Kind) -> _Fill:
        # A fill depends on the pool only through the shapes it took (and any it exhausted),
        # so it replays unchanged while each of them is still at least that plentiful.
        take = self.cache.get(kind.index)
        if take is None or any(self.avail[i] < n for i, n in take.items()):
            take = self.cache[kind.index] = self.fill(kind, kind.cpu, kind.mem)
        return take

    def commit(self, b: _Bin, take: _Fill) -> None:
        for i, n in take.items():
            b.add_shape(i, self.shapes[i], n)
            self.avail[i] -= n


def _greedy(
    problem: _Problem, objective: Literal["cost", "hosts"], align: float = _ALIGN
) -> list[_Bin]:
    if len(problem.shapes) <= _MOST_SHAPES:
        return _greedy_exact(problem, objective, align)
    # The greedy costs O(#shapes) per host; with very many distinct shapes (an imported
    # inventory, say) it packs classes of near-equal VMs, each at its members' mean size,
    # then deals the real VMs out and re-places the few that overflow a host.
    coarse, members = _coarsen(problem.shapes)
    bins = _greedy_exact(dataclasses.replace(problem, shapes=coarse), objective, align)
    return _deal(bins, coarse, members, problem)


def _coarsen(shapes: list[_Shape]) -> tuple[list[_Shape], list[list[_Shape]]]:
    """At most _MOST_SHAPES classes of VMs with equal vCPUs and nested flag and memory within
    a few percent; a class is as big as its members' mean, and lists one member per VM."""
    steps = 64  # classes per doubling of memory
    while True:
        classes: dict[tuple[int, bool, int], list[_Shape]] = {}
        for s in shapes:
            classes.setdefault((s.cpu, s.nested, math.ceil(math.log2(s.mem) * steps)), []).append(s)
        if len(classes) <= _MOST_SHAPES or steps == 1:
            break
        steps //= 2
    coarse, members = [], []
    for key in sorted(classes, key=lambda k: (-k[2], -k[0], k[1])):
        units = [s for s in sorted(classes[key], key=lambda s: -s.mem) for _ in s.names]
        mean = math.ceil(sum(s.mem for s in units) / len(units))
        coarse.append(_Shape(key[0], mean, key[1], [n for s in classes[key] for n in s.names]))
        members.append(units)
    return coarse, members


def _deal(
    bins: list[_Bin], coarse: list[_Shape], members: list[list[_Shape]], problem: _Problem
) -> list[_Bin]:
    """Swap each class count of a host for real VMs, alternately the largest and the smallest
    left so that a host's total stays near the planned one; then re-place what overflows."""
    index = {id(s): i for i, s in enumerate(problem.shapes)}
    ends = [[0, len(units)] for units in members]
    for b in bins:
        counts, b.counts = b.counts, {}
        b.cpu = b.mem = b.n = b.n_nested = 0
        for name in b.names:
            single = problem.request.demands[problem.order[name]]
            b.add(single.cpus, single.memory_mib, single.nested)
        for c in sorted(counts):
            for k in range(counts[c]):
                lo, hi = ends[c]
                if k % 2 == 0:
                    shape, ends[c][0] = members[c][lo], lo + 1
                else:
                    shape, ends[c][1] = members[c][hi - 1], hi - 1
                b.add_shape(index[id(shape)], shape, 1)
    overflow: list[int] = []
    for b in bins:
        while b.free()[1] < 0:  # vCPUs are exact within a class, so only memory can overflow
            i = min(b.counts, key=lambda i: (-problem.shapes[i].mem, i))
            b.add_shape(i, problem.shapes[i], -1)
            overflow.append(i)
    for i in sorted(overflow, key=lambda i: (-problem.shapes[i].mem, i)):
        shape = problem.shapes[i]
        target = next((b for b in bins if b.room(shape.cpu, shape.mem, shape.nested)), None)
        if target is None:
            kinds = [k for k in problem.kinds if k.fits(shape.cpu, shape.mem, shape.nested)]
            target = _Bin(min(kinds, key=lambda k: (k.cost, k.host.name)))
            bins.append(target)
        target.add_shape(i, shape, 1)
    return bins


def _greedy_exact(
    problem: _Problem, objective: Literal["cost", "hosts"], align: float
) -> list[_Bin]:
    """Open, host by host, the kind whose best fill scores highest (value per cost, or value
    alone for the fewest hosts), valuing VMs at the LP prices of the VMs still unplaced."""
    kinds, shapes = problem.kinds, problem.shapes
    packer = _Packer(problem, align)
    least = packer.least
    frontier = _frontier(kinds)
    per_cost = objective == "cost"

    def valuation(prices: tuple[float, float]) -> _Valuation:
        price_cpu, price_mem = prices
        values = [price_cpu * s.cpu + price_mem * (s.mem + least[i]) for i, s in enumerate(shapes)]
        ceiling = [
            (price_cpu * k.cpu + price_mem * k.mem) / (k.cost if per_cost else 1.0) for k in kinds
        ]
        # among equal ceilings: the bigger host when saving money, the cheaper for fewest hosts
        ranked = sorted(
            kinds, key=lambda k: (-ceiling[k.index], -k.cost if per_cost else k.cost, k.host.name)
        )
        return _Valuation(values, ceiling, ranked)

    left_cpu = sum(s.cpu * len(s.names) for s in shapes)
    left_mem = sum((s.mem + least[i]) * len(s.names) for i, s in enumerate(shapes))
    if per_cost:
        cpu = left_cpu + sum(d.cpus for d in problem.singles)
        mem = left_mem + sum(
            d.memory_mib + _least_overhead(kinds, d.cpus, d.memory_mib, d.nested)
            for d in problem.singles
        )
        val = valuation(_lp(frontier, cpu, mem)[1])
    else:
        # fewest hosts: a VM is worth the share of the largest host it takes
        val = valuation((1.0 / max(k.cpu for k in kinds), 1.0 / max(k.mem for k in kinds)))

    bins = _place_singles(problem, val.ranked)
    for b in bins:  # top up the hosts that anti-affinity opened before opening more
        packer.commit(b, packer.fill(b.kind, *b.free()))
        left_cpu, left_mem = _left(packer)

    while left_cpu:
        if per_cost:
            # as the mix of VMs still unplaced drifts, so does the best mix of host types;
            # prices fixed at the start would keep opening the types that suited the start
            val = valuation(_lp(frontier, left_cpu, left_mem)[1])
        kind, take = _best_host(val, per_cost, packer)
        # repeat the fill, but leave at least half of each shape it took to the next round,
        # whose prices will have moved
        repeat = max(1, min(packer.avail[i] // (2 * n) for i, n in take.items()))
        for _ in range(repeat):
            b = _Bin(kind)
            packer.commit(b, take)
            bins.append(b)
        for i, n in take.items():
            left_cpu -= shapes[i].cpu * n * repeat
            left_mem -= (shapes[i].mem + least[i]) * n * repeat
    return bins


def _left(packer: _Packer) -> tuple[int, int]:
    shapes, avail = packer.shapes, packer.avail
    cpu = sum(s.cpu * avail[i] for i, s in enumerate(shapes))
    return cpu, sum((s.mem + packer.least[i]) * avail[i] for i, s in enumerate(shapes))


def _best_host(val: _Valuation, per_cost: bool, packer: _Packer) -> tuple[_Kind, _Fill]:
    best: tuple[_Kind, _Fill] | None = None
    best_score = 0.0
    for kind in val.ranked:
        if best is not None and val.ceiling[kind.index] <= best_score * (1 + _PREFER_BIGGER):
            break  # no fill of this kind, or of any kind after it, can win
        take = packer.full_host(kind)
        if not take:
            continue
        value = math.fsum(val.values[i] * n for i, n in take.items())
        score = value / kind.cost if per_cost else value
        if best is None or score > best_score * (1 + _PREFER_BIGGER):
            best, best_score = (kind, take), score
    if best is None:  # _prepare checked that every VM fits some kind
        raise AssertionError("no host type can take the remaining VMs")
    return best


def _pack_then_spread(problem: _Problem, align: float) -> list[_Bin]:
    """Pack every VM as if unconstrained, then hand VMs under anti-affinity the slots of
    their shape on distinct hosts: VMs of one shape are interchangeable, so only the names
    move and the packing keeps its quality. A VM left without a slot is placed apart."""
    flat = dataclasses.replace(
        problem, shapes=_shapes(problem.request.demands), singles=[], conflicts={}
    )
    packed = _greedy(flat, "cost", align)
    flat_index = {(s.cpu, s.mem, s.nested): i for i, s in enumerate(flat.shapes)}
    bulk_index = {(s.cpu, s.mem, s.nested): j for j, s in enumerate(problem.shapes)}
    slots = [dict(b.counts) for b in packed]
    bins = [_Bin(b.kind) for b in packed]
    homeless: list[Demand] = []
    # most constrained first; each to the host with most free slots of its shape
    for d in sorted(
        problem.singles, key=lambda d: (-len(problem.conflicts[d.name]), problem.order[d.name])
    ):
        i = flat_index[(d.cpus, d.memory_mib, d.nested)]
        clash = problem.conflicts[d.name]
        best = -1
        for h, b in enumerate(bins):
            if slots[h].get(i, 0) > (slots[best].get(i, 0) if best >= 0 else 0) and not any(
                n in clash for n in b.names
            ):
                best = h
        if best < 0:
            homeless.append(d)
            continue
        bins[best].add_single(d)
        slots[best][i] -= 1
    left = [len(s.names) for s in problem.shapes]
    for h, b in enumerate(bins):
        for i in sorted(slots[h]):
            s = flat.shapes[i]
            j = bulk_index.get((s.cpu, s.mem, s.nested))
            if j is not None and slots[h][i] and left[j]:
                count = min(slots[h][i], left[j])
                b.add_shape(j, problem.shapes[j], count)
                left[j] -= count
    bins = [b for b in bins if b.n]
    for d in homeless:
        _first_fit_single(d, bins, problem)
    return bins


def _first_fit_single(demand: Demand, bins: list[_Bin], problem: _Problem) -> None:
    clash = problem.conflicts[demand.name]
    for b in bins:
        if b.room(demand.cpus, demand.memory_mib, demand.nested) and not any(
            n in clash for n in b.names
        ):
            b.add_single(demand)
            return
    kind = min(
        (k for k in problem.kinds if k.fits(demand.cpus, demand.memory_mib, demand.nested)),
        key=lambda k: (k.cost, k.host.name),
    )
    b = _Bin(kind)
    b.add_single(demand)
    bins.append(b)


def _place_singles(problem: _Problem, ranked: list[_Kind]) -> list[_Bin]:
    """First fit for VMs under anti-affinity; a new host is of the best-ranked kind that fits."""
    bins: list[_Bin] = []
    for demand in problem.singles:
        clash = problem.conflicts[demand.name]
        for b in bins:
            if b.room(demand.cpus, demand.memory_mib, demand.nested) and not any(
                n in clash for n in b.names
            ):
                b.add_single(demand)
                break
        else:
            kind = next(k for k in ranked if k.fits(demand.cpus, demand.memory_mib, demand.nested))
            b = _Bin(kind)
            b.add_single(demand)
            bins.append(b)
    return bins


class _Sizer:
    """The cheapest kind that holds a given content, memoised: replicated hosts repeat."""

    def __init__(self, kinds: list[_Kind]) -> None:
        self.by_cost = sorted(kinds, key=lambda k: (k.cost, -k.cpu, -k.mem, k.host.name))
        self.memo: dict[tuple[int, int, int, bool], _Kind | None] = {}

    def cheapest(self, cpu: int, mem: int, n: int, nested: bool) -> _Kind | None:
        key = (cpu, mem, n, nested)
        if key not in self.memo:
            self.memo[key] = next(
                (
                    k
                    for k in self.by_cost
                    if cpu <= k.cpu
                    and mem + n * k.overhead <= k.mem
                    and (k.takes_nested or not nested)
                ),
                None,
            )
        return self.memo[key]


def _downsize(bins: list[_Bin], kinds: list[_Kind]) -> list[_Bin]:
    """Move every host to the cheapest kind that still holds its VMs."""
    sizer = _Sizer(kinds)
    for b in bins:
        kind = sizer.cheapest(b.cpu, b.mem, b.n, b.nested)
        if kind is not None and kind.cost < b.kind.cost:
            b.kind = kind
    return bins


def _merge_pairs(bins: list[_Bin], problem: _Problem, cheaper_only: bool = True) -> list[_Bin]:
    """Merge two hosts into one when a single kind holds both for no more (or at all, when
    fewer hosts matter more than cost). Quadratic in hosts: for small plans, where the last
    half-empty hosts weigh most."""
    sizer = _Sizer(problem.kinds)
    changed = True
    while changed:
        changed = False
        i = 0
        while i < len(bins):
            j = i + 1
            while j < len(bins):
                if _merge(bins[i], bins[j], sizer, problem.conflicts, cheaper_only):
                    del bins[j]
                    changed = True
                else:
                    j += 1
            i += 1
    return bins


def _shift(bins: list[_Bin], problem: _Problem) -> list[_Bin]:
    """Empty hosts, or shrink them to a cheaper type, by moving their VMs into the room left
    on the other hosts; a host's moves are undone unless they save money."""
    sizer = _Sizer(problem.kinds)
    by_name = {d.name: d for d in problem.request.demands}
    for a in sorted(bins, key=lambda b: b.kind.cost):  # cheap hosts are the easiest to empty
        others = [b for b in bins if b is not a]
        moves = _move_out(a, others, problem, by_name)
        if not a.n:
            bins.remove(a)
            continue
        smaller = sizer.cheapest(a.cpu, a.mem, a.n, a.nested)
        if smaller is not None and smaller.cost < a.kind.cost - 1e-12:
            a.kind = smaller
        else:
            _undo(moves, a, problem, by_name)
    return bins


_Move = tuple[_Bin, int, int, str]  # target, shape index (-1: single), count, single's name


def _move_out(
    a: _Bin, others: list[_Bin], problem: _Problem, by_name: dict[str, Demand]
) -> list[_Move]:
    """Move what fits of a's VMs, largest first, each to the host it fills the most."""
    moves: list[_Move] = []
    units = [(problem.shapes[i].mem, problem.shapes[i].cpu, i, "") for i in sorted(a.counts)]
    units += [(by_name[n].memory_mib, by_name[n].cpus, -1, n) for n in a.names]
    for mem, cpu, index, name in sorted(units, key=lambda u: (-u[0], -u[1], u[2], u[3])):
        nested = problem.shapes[index].nested if index >= 0 else by_name[name].nested
        left = a.counts[index] if index >= 0 else 1
        targets = sorted(
            (b for b in others if b.room(cpu, mem, nested)),
            key=lambda b: (
                b.free()[1] - (mem + b.kind.overhead) * min(left, b.room(cpu, mem, nested))
            ),
        )
        for b in targets:
            if index < 0:
                if any(n in problem.conflicts[name] for n in b.names):
                    continue
                a.remove_single(by_name[name])
                b.add_single(by_name[name])
                moves.append((b, -1, 1, name))
                break
            count = min(left, b.room(cpu, mem, nested))
            a.add_shape(index, problem.shapes[index], -count)
            b.add_shape(index, problem.shapes[index], count)
            moves.append((b, index, count, ""))
            left -= count
            if not left:
                break
    return moves


def _undo(moves: list[_Move], a: _Bin, problem: _Problem, by_name: dict[str, Demand]) -> None:
    for b, index, count, name in reversed(moves):
        if index < 0:
            b.remove_single(by_name[name])
            a.add_single(by_name[name])
        else:
            b.add_shape(index, problem.shapes[index], -count)
            a.add_shape(index, problem.shapes[index], count)


def _merge_down(bins: list[_Bin], problem: _Problem, limit: int) -> list[_Bin]:
    """Merge hosts, the pair that adds least cost first, until at most `limit` remain."""
    bins = [_copy(b) for b in bins]
    sizer = _Sizer(problem.kinds)
    while len(bins) > limit:
        best: tuple[float, int, int] | None = None
        for i, a in enumerate(bins):
            for j in range(i + 1, len(bins)):
                b = bins[j]
                kind = sizer.cheapest(a.cpu + b.cpu, a.mem + b.mem, a.n + b.n, a.nested or b.nested)
                if kind is None or any(n in problem.conflicts[m] for m in a.names for n in b.names):
                    continue
                extra = kind.cost - a.kind.cost - b.kind.cost
                if best is None or extra < best[0] - 1e-12:
                    best = (extra, i, j)
        if best is None:
            break
        _merge(bins[best[1]], bins[best[2]], sizer, problem.conflicts, cheaper_only=False)
        del bins[best[2]]
    return bins


def _copy(b: _Bin) -> _Bin:
    twin = _Bin(b.kind)
    twin.absorb(b)
    return twin


def _merge(
    a: _Bin, b: _Bin, sizer: _Sizer, conflicts: dict[str, set[str]], cheaper_only: bool
) -> bool:
    kind = sizer.cheapest(a.cpu + b.cpu, a.mem + b.mem, a.n + b.n, a.nested or b.nested)
    # at equal cost one host beats two: fewer machines to boot, less traffic between them
    if kind is None or (cheaper_only and kind.cost > a.kind.cost + b.kind.cost + 1e-12):
        return False
    if any(n in conflicts[m] for m in a.names for n in b.names):
        return False
    a.kind = kind
    a.absorb(b)
    return True


# ---------------------------------------------------------------------------------------------
# First fit decreasing: the baseline


@dataclass
class _Run:
    """Consecutive VMs of the FFD order that are interchangeable (or one constrained VM)."""

    cpu: int
    mem: int
    nested: bool
    shape: int  # index into problem.shapes; -1 for a VM under anti-affinity
    count: int
    single: Demand | None = None


def _ffd(problem: _Problem) -> list[_Bin]:
    """VMs largest first, each into the first open host with room, else into a new host of the
    cheapest type that fits it. A run of identical VMs fills host after host at once, which
    is what one-by-one placement gives too (room only shrinks)."""
    runs = _ffd_runs(problem)
    cheapest: dict[tuple[int, int, bool], _Kind] = {}
    for run in runs:
        key = (run.cpu, run.mem, run.nested)
        if key not in cheapest:
            fitting = [k for k in problem.kinds if k.fits(*key)]
            cheapest[key] = min(fitting, key=lambda k: (k.cost, k.host.name))
    bins: list[_Bin] = []
    index = _FirstFit(len(problem.request.demands))
    for run in runs:
        new_kind = cheapest[(run.cpu, run.mem, run.nested)]
        if run.single is not None:
            clash = problem.conflicts[run.single.name]
            at = index.find(
                run.cpu, run.mem, run.nested, lambda h, clash=clash: clash.isdisjoint(bins[h].names)
            )
            if at is None:
                at = len(bins)
                bins.append(_Bin(new_kind))
            bins[at].add_single(run.single)
            index.update(at, bins[at])
            continue
        shape, count = problem.shapes[run.shape], run.count
        searching = True
        while count:
            # once no open host has room, none will for the rest of the run
            at = index.find(run.cpu, run.mem, run.nested) if searching else None
            if at is None:
                searching = False
                at = len(bins)
                bins.append(_Bin(new_kind))
            n = min(count, bins[at].room(run.cpu, run.mem, run.nested))
            bins[at].add_shape(run.shape, shape, n)
            index.update(at, bins[at])
            count -= n
    return bins


class _FirstFit:
    """The leftmost host with room for a VM, through a max-tree over hosts in opening order:
    a subtree whose best free vCPU or best free memory is too small is skipped whole."""

    def __init__(self, most_hosts: int) -> None:
        self.size = 1 << max(0, most_hosts - 1).bit_length()
        self.cpu = [-1] * (2 * self.size)  # most vCPU free
        self.mem = [-1] * (2 * self.size)  # most guest memory one more VM could have
        self.nested_mem = [-1] * (2 * self.size)  # the same over hosts that take nested VMs

    def update(self, host: int, b: _Bin) -> None:
        cpus, mems, nested_mems = self.cpu, self.mem, self.nested_mem
        free_cpu, free_mem = b.free()
        i = host + self.size
        cpus[i] = free_cpu
        mems[i] = free_mem - b.kind.overhead
        nested_mems[i] = mems[i] if b.kind.takes_nested else -1
        i //= 2
        while i:
            left, right = 2 * i, 2 * i + 1
            cpu = max(cpus[right], cpus[left])
            mem = max(mems[right], mems[left])
            nested_mem = max(nested_mems[right], nested_mems[left])
            if cpus[i] == cpu and mems[i] == mem and nested_mems[i] == nested_mem:
                break  # nothing above changes either
            cpus[i], mems[i], nested_mems[i] = cpu, mem, nested_mem
            i //= 2

    def find(
        self, cpu: int, mem: int, nested: bool, accept: Callable[[int], bool] | None = None
    ) -> int | None:
        mems = self.nested_mem if nested else self.mem
        stack = [1]
        while stack:
            i = stack.pop()
            if self.cpu[i] < cpu or mems[i] < mem:
                continue
            if i >= self.size:
                if accept is None or accept(i - self.size):
                    return i - self.size
                continue
            stack.append(2 * i + 1)
            stack.append(2 * i)  # left first: the earliest host wins
        return None


def _ffd_runs(problem: _Problem) -> list[_Run]:
    big_cpu = max(k.cpu for k in problem.kinds)
    big_mem = max(k.mem for k in problem.kinds)
    shape_of = {name: i for i, s in enumerate(problem.shapes) for name in s.names}
    order = problem.order
    demands = sorted(
        problem.request.demands,
        key=lambda d: (
            -(d.cpus / big_cpu + d.memory_mib / big_mem),
            -d.memory_mib,
            -d.cpus,
            d.nested,
            order[d.name],
        ),
    )
    runs: list[_Run] = []
    for d in demands:
        i = shape_of.get(d.name, -1)
        if i >= 0 and runs and runs[-1].shape == i:
            runs[-1].count += 1
        else:
            runs.append(_Run(d.cpus, d.memory_mib, d.nested, i, 1, None if i >= 0 else d))
    return runs


# ---------------------------------------------------------------------------------------------
# Public entry points


def place(request: Request, catalogue: Catalogue) -> Placement:
    """The cheapest plan found that honours every constraint of the request."""
    problem = _prepare(request, catalogue)
    if not request.demands:
        return _placement(problem, [], 0.0)
    limit = request.max_hosts
    if limit is not None:
        for group in request.anti_affinity:
            if len(group) > limit:
                raise PlacementError(
                    f"anti-affinity puts {len(group)} VMs ({', '.join(group)}) on distinct hosts "
                    f"but max_hosts is {limit}",
                    vm=group[0],
                    dimension="hosts",
                    hint="raise max_hosts or shrink the anti-affinity group",
                )
    plans = [_polish(_greedy(problem, "cost", align), problem) for align in _alignments(problem)]
    if problem.singles:
        plans += [
            _polish(_pack_then_spread(problem, align), problem) for align in _alignments(problem)
        ]
    plans.append(_ffd(problem))
    fitting = [p for p in plans if limit is None or len(p) <= limit]
    if not fitting:
        assert limit is not None
        # try harder: merge the cheapest plan's hosts where that costs least, and, apart,
        # fill the biggest hosts first and merge whatever still fits together
        tries = (
            [_merge_down(plans[0], problem, limit)] if len(plans[0]) <= _MERGE_DOWN_UP_TO else []
        )
        tries.append(
            _merge_pairs(_polish(_greedy(problem, "hosts"), problem), problem, cheaper_only=False)
        )
        fitting = [p for p in tries if len(p) <= limit]
        if not fitting:
            raise _too_many_hosts(problem, min(len(p) for p in plans + tries))
    # cheapest, then fewest hosts; the first of equals is the LP-guided plan
    best = min(fitting, key=lambda bins: (round(_cost(bins), 9), len(bins)))
    bound, optimal = _bound(problem), False
    if len(request.demands) <= exact.EXACT_UP_TO and request.exact_s > 0:
        best, proven, optimal = _solve_exactly(problem, best)
        bound = max(bound, proven)
    cost = _cost(best)
    # a bound that meets the cost proves it too (the LP's, on a lab that packs perfectly)
    optimal = optimal or cost <= bound * (1 + 1e-6)
    return _placement(problem, best, min(bound, cost), optimal)


def _solve_exactly(problem: _Problem, best: list[_Bin]) -> tuple[list[_Bin], float, bool]:
    """The integer program of exact.py, checked against the greedy's best plan: a cheaper plan
    if it finds one, the bound it proved, and whether that bound is the plan's cost."""
    kinds = [exact.Kind(k.cpu, k.mem, k.overhead, k.takes_nested, k.cost) for k in problem.kinds]
    items = [exact.Item(s.cpu, s.mem, s.nested, len(s.names)) for s in problem.shapes]
    # anti-affine VMs of one shape and the same groups are interchangeable: one item
    member_of: dict[str, tuple[int, ...]] = {}
    for g, group in enumerate(problem.request.anti_affinity):
        for name in group:
            member_of[name] = (*member_of.get(name, ()), g)
    alike: dict[tuple[int, int, bool, tuple[int, ...]], list[Demand]] = {}
    for d in problem.singles:
        alike.setdefault((d.cpus, d.memory_mib, d.nested, member_of[d.name]), []).append(d)
    single_items = list(alike.values())
    items += [exact.Item(*key[:3], len(ds), key[3]) for key, ds in alike.items()]
    result = exact.solve(kinds, items, problem.request.max_hosts, _cost(best), problem.request.exact_s)
    if result is None:
        return best, 0.0, False
    if result.hosts is None:
        return best, result.cost, True
    n_shapes = len(problem.shapes)
    next_single = [0] * len(single_items)
    bins = []
    for t, content in result.hosts:
        b = _Bin(problem.kinds[t])
        for i, count in sorted(content.items()):
            if i < n_shapes:
                b.add_shape(i, problem.shapes[i], count)
                continue
            members = single_items[i - n_shapes]
            for d in members[next_single[i - n_shapes] : next_single[i - n_shapes] + count]:
                b.add_single(d)
            next_single[i - n_shapes] += count
        bins.append(b)
    # VMs an over-covering pattern left out may leave a host a cheaper type could hold
    bins = _downsize(bins, problem.kinds)
    bins.sort(key=lambda b: -b.kind.cost)  # dearest first, as the greedy opens them
    return bins, _cost(bins), True


def first_fit_decreasing(request: Request, catalogue: Catalogue) -> Placement:
    """The plain baseline the planner is benchmarked against; honours the same constraints."""
    problem = _prepare(request, catalogue)
    bins = _ffd(problem) if request.demands else []
    if request.max_hosts is not None and len(bins) > request.max_hosts:
        raise _too_many_hosts(problem, len(bins))
    return _placement(problem, bins, _bound(problem))


def _alignments(problem: _Problem) -> tuple[float, ...]:
    # One greedy run is most often unlucky on small labs, where it is also cheapest to rerun
    # with other fill exponents and keep the best.
    work = len(problem.shapes) * len(problem.request.demands)
    return (_ALIGN, 2.0, 16.0) if work <= _VARIANTS_WORK else (_ALIGN,)


def _polish(bins: list[_Bin], problem: _Problem) -> list[_Bin]:
    bins = _downsize(bins, problem.kinds)
    if len(bins) > _MERGE_UP_TO:
        return bins
    return _merge_pairs(_shift(_merge_pairs(bins, problem), problem), problem)


def _cost(bins: list[_Bin]) -> float:
    return math.fsum(b.kind.cost for b in bins)


def _placement(problem: _Problem, bins: list[_Bin], bound: float, optimal: bool = False) -> Placement:
    """Name hosts in order and hand out VM names: shape members go to hosts in host order."""
    shapes = problem.shapes
    next_name = [0] * len(shapes)
    hosts = []
    for number, b in enumerate(bins, start=1):
        names = list(b.names)
        for i in sorted(b.counts):
            start = next_name[i]
            names.extend(shapes[i].names[start : start + b.counts[i]])
            next_name[i] = start + b.counts[i]
        names.sort(key=problem.order.__getitem__)
        kind = b.kind
        hosts.append(PlacedHost(f"host-{number}", kind.host, kind.host.accel, tuple(names),
                                kind.reserve_cpu, kind.reserve_mem))
    where = {vm: host.name for host in hosts for vm in host.vms}
    vm_host = {d.name: where[d.name] for d in problem.request.demands}
    return Placement(tuple(hosts), _cost(bins), bound, MappingProxyType(vm_host), optimal)
