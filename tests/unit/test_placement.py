"""The placement planner: validity against the rules (recomputed here, independently), the lower
bound, determinism, constraints, errors, and plan quality."""

from __future__ import annotations

import dataclasses
import itertools
import math
import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ravel.errors import PlacementError
from ravel.plan import placement as placement_module
from ravel.plan.catalogue import Catalogue, HostType, load_catalogue
from ravel.plan.reserve import CLOUD_HOST, NAMESPACE_HOST
from ravel.plan.placement import (
    QEMU_OVERHEAD_MIB,
    Demand,
    Placement,
    Request,
    first_fit_decreasing,
    lower_bound,
    place,
)

CATALOGUES = {name: load_catalogue(name) for name in ("local", "aws", "gcp")}
LOCAL, AWS, GCP = CATALOGUES["local"], CATALOGUES["aws"], CATALOGUES["gcp"]


# ---------------------------------------------------------------------------------------------
# The rules, written out again: a plan is checked against these, not against the planner's code


def reserve_mib(host_type: HostType, catalogue: Catalogue) -> int:
    """What a host keeps for itself in both modes: a fixed part and a share of its memory."""
    reserve = catalogue.reserve
    return reserve.fixed_mib + math.ceil(reserve.share * host_type.memory_mib)


def capacity(host_type: HostType, request: Request, catalogue: Catalogue) -> tuple[float, int]:
    mem = host_type.memory_mib - reserve_mib(host_type, catalogue)
    if request.optimize == "performance":
        return host_type.cpus - catalogue.reserve.cpus, mem
    return host_type.cpus * request.cpu_overcommit, mem


def allowed(request: Request, catalogue: Catalogue) -> list[HostType]:
    """The types a plan may use: performance mode keeps to those where KVM reaches the guests,
    when the allowed types include some."""
    types = (
        [catalogue.get(n) for n in request.host_types]
        if request.host_types
        else list(catalogue.host_types)
    )
    usable = [t for t in types if usable_for_guests(t, request, catalogue)]
    if request.optimize == "performance" and any(t.nested_virt for t in usable):
        return [t for t in types if t.nested_virt]
    return types


def usable_for_guests(host_type: HostType, request: Request, catalogue: Catalogue) -> bool:
    cpu, mem = capacity(host_type, request, catalogue)
    return cpu >= 1 and mem > QEMU_OVERHEAD_MIB["kvm" if host_type.nested_virt else "tcg"]


def holds(host_type: HostType, vms: list[Demand], request: Request, catalogue: Catalogue) -> bool:
    cpu_cap, mem_cap = capacity(host_type, request, catalogue)
    overhead = QEMU_OVERHEAD_MIB["kvm" if host_type.nested_virt else "tcg"]
    nested_types_exist = any(t.nested_virt for t in allowed(request, catalogue))
    if any(vm.nested for vm in vms) and nested_types_exist and not host_type.nested_virt:
        return False
    return (
        sum(vm.cpus for vm in vms) <= cpu_cap + 1e-9
        and sum(vm.memory_mib + overhead for vm in vms) <= mem_cap
    )


def assert_valid(plan: Placement, request: Request, catalogue: Catalogue) -> None:
    by_name = {d.name: d for d in request.demands}
    placed = [vm for host in plan.hosts for vm in host.vms]
    assert sorted(placed) == sorted(by_name), "every VM placed exactly once"
    assert list(plan.vm_host) == [d.name for d in request.demands]
    assert [h.name for h in plan.hosts] == [f"host-{i}" for i in range(1, len(plan.hosts) + 1)]
    allowed_names = {t.name for t in allowed(request, catalogue)}
    for host in plan.hosts:
        assert host.vms, "no empty hosts"
        assert host.type.name in allowed_names
        assert host.accel == ("kvm" if host.type.nested_virt else "tcg")
        assert holds(host.type, [by_name[v] for v in host.vms], request, catalogue), host
        for vm in host.vms:
            assert plan.vm_host[vm] == host.name
    for group in request.anti_affinity:
        hosts = [plan.vm_host[vm] for vm in group]
        assert len(set(hosts)) == len(hosts), f"anti-affinity broken for {group}"
    if request.max_hosts is not None:
        assert len(plan.hosts) <= request.max_hosts
    assert plan.cost_per_hour == pytest.approx(math.fsum(h.type.hourly_cost for h in plan.hosts))
    assert plan.cost_per_hour >= plan.lower_bound_per_hour
    if request.demands:
        assert plan.lower_bound_per_hour > 0


# ---------------------------------------------------------------------------------------------
# Generated requests


def demands_for(
    catalogue: Catalogue, draw: st.DrawFn, min_size: int = 0, max_size: int = 24
) -> tuple[Demand, ...]:
    if catalogue.provider == "local":
        cpus, mem = st.integers(1, 6), st.integers(64, 6000)
    else:
        cpus, mem = st.sampled_from([1, 2, 4, 8, 16]), st.integers(128, 96 * 1024)
    n = draw(st.integers(min_size, max_size))
    # few distinct shapes, as labs have: VMs repeat one of a handful of sizes
    sizes = draw(st.lists(st.tuples(cpus, mem, st.booleans()), min_size=1, max_size=5))
    picks = draw(st.lists(st.integers(0, len(sizes) - 1), min_size=n, max_size=n))
    return tuple(Demand(f"vm-{i}", *sizes[p]) for i, p in enumerate(picks))


@st.composite
def requests(draw: st.DrawFn, provider: str | None = None) -> tuple[Request, Catalogue]:
    catalogue = CATALOGUES[provider or draw(st.sampled_from(sorted(CATALOGUES)))]
    demands = demands_for(catalogue, draw)
    names = [d.name for d in demands]
    groups: list[tuple[str, ...]] = []
    if len(names) >= 2 and draw(st.booleans()):
        for _ in range(draw(st.integers(1, 2))):
            group = draw(
                st.lists(
                    st.sampled_from(names), min_size=2, max_size=min(4, len(names)), unique=True
                )
            )
            groups.append(tuple(group))
    host_types: tuple[str, ...] = ()
    if draw(st.booleans()):
        all_names = [t.name for t in catalogue.host_types]
        host_types = tuple(
            draw(st.lists(st.sampled_from(all_names), min_size=1, max_size=6, unique=True))
        )
    request = Request(
        demands=demands,
        optimize=draw(st.sampled_from(["cost", "performance"])),
        cpu_overcommit=draw(st.sampled_from([1.0, 1.5, 2.0, 3.0])),
        host_types=host_types,
        anti_affinity=tuple(groups),
        max_hosts=draw(st.none() | st.integers(1, 6)),
    )
    return request, catalogue


def fits_nowhere(vm: Demand, request: Request, catalogue: Catalogue) -> bool:
    return not any(holds(t, [vm], request, catalogue) for t in allowed(request, catalogue))


PROPERTY = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# ---------------------------------------------------------------------------------------------
# Properties


@PROPERTY
@given(requests())
def test_plans_obey_every_rule_or_the_error_is_real(case: tuple[Request, Catalogue]) -> None:
    request, catalogue = case
    try:
        plan = place(request, catalogue)
    except PlacementError as error:
        if error.dimension == "hosts":
            # only when the cheapest plan really needed more hosts than allowed
            assert request.max_hosts is not None
            unbounded = place(dataclasses.replace(request, max_hosts=None), catalogue)
            assert len(unbounded.hosts) > request.max_hosts
            return
        # otherwise some VM fits no allowed type
        assert error.vm is not None and error.dimension in ("cpus", "memory", "host_type")
        if error.dimension != "host_type":
            vm = next(d for d in request.demands if d.name == error.vm)
            assert fits_nowhere(vm, request, catalogue)
            assert f'vm "{vm.name}"' in error.message and "short by" in error.message
        return
    assert_valid(plan, request, catalogue)
    # the LP bound, or better: the exact solver's proof on small labs
    assert plan.lower_bound_per_hour >= lower_bound(request, catalogue) * (1 - 1e-9)
    if plan.optimal:
        assert plan.lower_bound_per_hour == pytest.approx(plan.cost_per_hour)
    unbounded = dataclasses.replace(request, max_hosts=None)
    baseline = first_fit_decreasing(unbounded, catalogue)
    assert_valid(baseline, unbounded, catalogue)
    if request.max_hosts is None or len(baseline.hosts) <= request.max_hosts:
        assert plan.cost_per_hour <= baseline.cost_per_hour + 1e-9


@PROPERTY
@given(requests())
def test_same_input_same_plan(case: tuple[Request, Catalogue]) -> None:
    # the greedy; the exact stage gives a plan only with a proof, whose wall-clock budget a
    # loaded machine could miss on one run and not the next (test_capacity checks a proof)
    request, catalogue = case
    request = dataclasses.replace(request, exact_s=0.0)
    try:
        first = place(request, catalogue)
    except PlacementError as error:
        with pytest.raises(PlacementError) as again:
            place(request, catalogue)
        assert again.value.message == error.message
        return
    second = place(request, catalogue)
    assert first == second
    assert [h.vms for h in first.hosts] == [h.vms for h in second.hosts]


def exact_optimum(request: Request, catalogue: Catalogue) -> float:
    """Cheapest plan by brute force over every partition of the VMs (tiny inputs only)."""
    types = sorted(allowed(request, catalogue), key=lambda t: t.hourly_cost)
    clash = {(a, b) for g in request.anti_affinity for a in g for b in g if a != b}

    def block_cost(block: tuple[Demand, ...]) -> float:
        if any((a.name, b.name) in clash for a, b in itertools.combinations(block, 2)):
            return math.inf
        return next(
            (t.hourly_cost for t in types if holds(t, list(block), request, catalogue)), math.inf
        )

    def partitions(items: list[Demand]):  # type: ignore[no-untyped-def]
        if not items:
            yield []
            return
        head, rest = items[0], items[1:]
        for part in partitions(rest):
            for i in range(len(part)):
                yield part[:i] + [(head, *part[i])] + part[i + 1 :]
            yield [(head,), *part]

    return min(math.fsum(block_cost(b) for b in part) for part in partitions(list(request.demands)))


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_lower_bound_never_exceeds_the_true_optimum(data: st.DataObject) -> None:
    provider = data.draw(st.sampled_from(["local", "aws"]))
    catalogue = CATALOGUES[provider]
    demands = demands_for(catalogue, data.draw, min_size=1, max_size=6)
    host_types: tuple[str, ...] = ()
    if provider == "aws":  # a handful of types keeps the brute force small and the LP honest
        host_types = (
            "c7i.large",
            "m7i.xlarge",
            "r7i.2xlarge",
            "r8i.xlarge",
            "m7i.4xlarge",
            "r7i.8xlarge",
            "r8i.8xlarge",
        )
    names = [d.name for d in demands]
    groups = ()
    if len(names) >= 2 and data.draw(st.booleans()):
        groups = (
            tuple(data.draw(st.lists(st.sampled_from(names), min_size=2, max_size=3, unique=True))),
        )
    request = Request(
        demands,
        optimize=data.draw(st.sampled_from(["cost", "performance"])),
        host_types=host_types,
        anti_affinity=groups,
    )
    if any(fits_nowhere(d, request, catalogue) for d in demands):
        return
    optimum = exact_optimum(request, catalogue)
    plan = place(request, catalogue)
    assert plan.lower_bound_per_hour <= optimum + 1e-9
    assert plan.cost_per_hour >= optimum - 1e-9


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.tuples(st.integers(1, 4000), st.integers(1, 4_000_000)), min_size=1, max_size=4),
    st.sampled_from(sorted(CATALOGUES)),
    st.sampled_from(["cost", "performance"]),
)
def test_lp_over_the_frontier_matches_all_pairs(
    totals: list[tuple[int, int]], provider: str, mode: str
) -> None:
    # The planner solves its LP over the convex frontier of host types only; check that this
    # equals the textbook enumeration of every single type and every pair.
    problem = placement_module._prepare(
        Request((Demand("a", 1, 1),), optimize=mode), CATALOGUES[provider]
    )  # type: ignore[arg-type]
    kinds = problem.kinds
    frontier = placement_module._frontier(kinds)
    for cpu, mem in totals:
        brute = min(k.cost * max(cpu / k.cpu, mem / k.mem) for k in kinds)
        for a, b in itertools.combinations(kinds, 2):
            det = a.cpu * b.mem - b.cpu * a.mem
            if det:
                xa, xb = (cpu * b.mem - b.cpu * mem) / det, (a.cpu * mem - a.mem * cpu) / det
                if xa >= 0 and xb >= 0:
                    brute = min(brute, a.cost * xa + b.cost * xb)
        assert placement_module._lp(frontier, cpu, mem)[0] == pytest.approx(brute, rel=1e-9)


# ---------------------------------------------------------------------------------------------
# Examples


def vms(
    n: int, cpus: int, memory_mib: int, prefix: str = "vm", nested: bool = False
) -> tuple[Demand, ...]:
    return tuple(Demand(f"{prefix}-{i}", cpus, memory_mib, nested) for i in range(1, n + 1))


def test_constants_are_the_documented_ones() -> None:
    assert QEMU_OVERHEAD_MIB == {"tcg": 128, "kvm": 64}
    assert (CLOUD_HOST.fixed_mib, CLOUD_HOST.share, CLOUD_HOST.cpus) == (512, 0.04, 1)
    assert (NAMESPACE_HOST.fixed_mib, NAMESPACE_HOST.share, NAMESPACE_HOST.cpus) == (64, 0.0, 1)
    assert LOCAL.reserve == NAMESPACE_HOST and AWS.reserve == CLOUD_HOST == GCP.reserve


def test_empty_lab_needs_nothing() -> None:
    plan = place(Request(()), LOCAL)
    assert plan.hosts == () and plan.cost_per_hour == 0 and plan.lower_bound_per_hour == 0
    assert dict(plan.vm_host) == {}
    assert lower_bound(Request(()), AWS) == 0


def test_one_small_vm_gets_the_smallest_local_host() -> None:
    plan = place(Request((Demand("web", 1, 512),)), LOCAL)
    assert [(h.name, h.type.name, h.accel, h.vms) for h in plan.hosts] == [
        ("host-1", "local-small", "tcg", ("web",))
    ]
    assert plan.cost_per_hour == pytest.approx(0.02)
    assert plan.ratio >= 1.0


def test_memory_counts_the_hypervisor_overhead_and_the_reserve_exactly() -> None:
    # local-small has 2048 MiB, keeps 64 for itself: a guest of 2048 - 64 - 128 fits, one MiB
    # more does not, in either mode
    for mode in ("cost", "performance"):
        fits = place(Request((Demand("a", 1, 1856),), optimize=mode), LOCAL)
        assert fits.hosts[0].type.name == "local-small"
        assert (fits.hosts[0].reserve_mib, fits.hosts[0].reserve_cpus) == (
            64, 1 if mode == "performance" else 0)
        over = place(Request((Demand("a", 1, 1857),), optimize=mode), LOCAL)
        assert over.hosts[0].type.name == "local-medium"
    # a cloud host keeps 512 MiB + 4 %: m8i.large (8 GiB, KVM) holds 8192 - 840 - 64
    m8i = Request((Demand("a", 1, 7288),), host_types=("m8i.large", "m8i.xlarge"))
    assert place(m8i, AWS).hosts[0].type.name == "m8i.large"
    assert place(m8i, AWS).hosts[0].reserve_mib == 512 + math.ceil(0.04 * 8192)
    m8i = dataclasses.replace(m8i, demands=(Demand("a", 1, 7289),))
    assert place(m8i, AWS).hosts[0].type.name == "m8i.xlarge"


def test_cost_mode_overcommits_cpu_and_performance_mode_never_does() -> None:
    demands = vms(4, 2, 256)  # 8 vCPU, tiny memory
    cost = place(Request(demands, cpu_overcommit=2.0, host_types=("local-medium",)), LOCAL)
    assert len(cost.hosts) == 1  # 4 vCPU x 2.0 holds 8 vCPU of guests
    strict = place(Request(demands, cpu_overcommit=1.0, host_types=("local-medium",)), LOCAL)
    assert len(strict.hosts) == 2
    perf = place(
        Request(demands, optimize="performance", cpu_overcommit=8.0, host_types=("local-medium",)),
        LOCAL,
    )
    assert len(perf.hosts) == 4  # 3 usable vCPU per host, overcommit ignored


def test_a_perfectly_packable_lab_meets_its_bound() -> None:
    # two 4 vCPU guests of 1888 MiB (+ 128 MiB of QEMU each) fill a local-medium less its
    # 64 MiB reserve exactly
    plan = place(Request(vms(4, 4, 1888)), LOCAL)
    assert plan.cost_per_hour == pytest.approx(0.08)
    assert plan.ratio == pytest.approx(1.0)


def test_nested_vms_go_to_nested_capable_types_when_there_are_some() -> None:
    demands = (*vms(6, 2, 4096), Demand("esxi", 4, 16384, nested=True))
    plan = place(Request(demands), AWS)
    host = plan.hosts[[h.name for h in plan.hosts].index(plan.vm_host["esxi"])]
    assert host.type.nested_virt and host.accel == "kvm"
    # local has no such type: nested VMs run under TCG anywhere
    plan = place(Request((Demand("kvm-in-kvm", 2, 1024, nested=True),)), LOCAL)
    assert plan.hosts[0].accel == "tcg"


def test_nested_vm_too_big_for_every_nested_type_is_an_error() -> None:
    request = Request(
        (Demand("esxi", 16, 65536, nested=True),), host_types=("c8i.large", "r7i.48xlarge")
    )
    with pytest.raises(PlacementError) as caught:
        place(request, AWS)
    error = caught.value
    assert error.vm == "esxi" and error.nearest == "c8i.large"
    assert "nested-capable" in error.message
    assert error.hint and "nested" in error.hint


def test_vm_larger_than_any_host_names_vm_dimension_and_nearest_type() -> None:
    with pytest.raises(PlacementError) as caught:
        place(Request((*vms(3, 1, 512), Demand("db-1", 48, 65536))), LOCAL)
    error = caught.value
    assert error.vm == "db-1" and error.dimension == "memory" and error.nearest == "local-large"
    assert error.message == (
        'vm "db-1" needs 48 vCPU + 65664 MiB (incl. 128 MiB hypervisor overhead); nearest allowed '
        "type local-large offers 16 vCPU (8 x overcommit 2.0) and 8128 MiB (8192 - 64 reserved "
        "for the host): cpus short by 32 vCPU and memory short by 57536 MiB"
    )


def test_performance_mode_cpu_shortage_suggests_cost_mode() -> None:
    with pytest.raises(PlacementError) as caught:
        place(Request((Demand("build", 8, 1024),), optimize="performance"), LOCAL)
    error = caught.value
    assert error.dimension == "cpus" and error.vm == "build"
    assert "7 vCPU (8 - 1 reserved for the host)" in error.message
    assert "cpus short by 1 vCPU" in error.message
    assert error.hint and "optimize: cost" in error.hint


def test_anti_affinity_spreads_vms_that_would_share_a_host() -> None:
    demands = vms(3, 1, 256, "dc") + vms(3, 1, 256, "web")
    request = Request(demands, anti_affinity=(("dc-1", "dc-2", "dc-3"),))
    plan = place(request, LOCAL)
    assert_valid(plan, request, LOCAL)
    assert len({plan.vm_host[f"dc-{i}"] for i in (1, 2, 3)}) == 3
    assert len(place(Request(demands), LOCAL).hosts) == 1


# bigger hosts dearer per vCPU than small ones, so that the cheapest plan uses many hosts
PRICEY_BIG = Catalogue(
    provider="test",
    region="nowhere",
    currency="USD",
    source="https://example.invalid/prices",
    as_of="2026-01-01",
    note="made up for tests",
    host_types=(
        HostType("small", 2, 4096, 1.0, False, "t"),
        HostType("big", 8, 16384, 5.0, False, "t"),
    ),
)


def test_max_hosts_makes_the_planner_use_bigger_hosts() -> None:
    demands = vms(4, 2, 3000)
    cheapest = place(Request(demands, cpu_overcommit=1.0), PRICEY_BIG)
    assert [h.type.name for h in cheapest.hosts] == ["small"] * 4
    request = Request(demands, cpu_overcommit=1.0, max_hosts=2)
    plan = place(request, PRICEY_BIG)
    assert_valid(plan, request, PRICEY_BIG)
    assert [h.type.name for h in plan.hosts] == ["big"]


def test_max_hosts_that_cannot_be_met_is_a_hosts_error() -> None:
    with pytest.raises(PlacementError) as caught:
        place(Request(vms(8, 4, 4000), max_hosts=2), LOCAL)
    assert caught.value.dimension == "hosts"
    assert "max_hosts is 2" in caught.value.message
    with pytest.raises(PlacementError) as caught:
        place(
            Request(vms(3, 1, 256), anti_affinity=(("vm-1", "vm-2", "vm-3"),), max_hosts=2), LOCAL
        )
    assert caught.value.dimension == "hosts" and "anti-affinity" in caught.value.message


@pytest.mark.parametrize(
    ("request_", "dimension"),
    [
        (Request((Demand("a", 1, 512), Demand("a", 1, 512))), "name"),
        (Request((Demand("a", 0, 512),)), "cpus"),
        (Request((Demand("a", 1, 0),)), "memory"),
        (Request((Demand("a", 1, 512),), anti_affinity=(("a", "ghost"),)), "anti_affinity"),
        (Request((Demand("a", 1, 512),), host_types=("local-huge",)), "host_type"),
        (Request((Demand("a", 1, 512),), cpu_overcommit=0.0), "cpus"),
        (Request((Demand("a", 1, 512),), max_hosts=0), "hosts"),
    ],
)
def test_bad_requests_are_placement_errors(request_: Request, dimension: str) -> None:
    with pytest.raises(PlacementError) as caught:
        place(request_, LOCAL)
    assert caught.value.dimension == dimension


def test_placement_is_a_hashable_value() -> None:
    plan = place(Request(vms(5, 2, 1024)), LOCAL)
    assert hash(plan) == hash(place(Request(vms(5, 2, 1024)), LOCAL))
    with pytest.raises(TypeError):
        plan.vm_host["vm-1"] = "host-9"  # type: ignore[index]


def mixed_lab(n: int, seed: int) -> tuple[Demand, ...]:
    rng = random.Random(seed)
    cpus = rng.choices([1, 2, 4, 8, 16], weights=[25, 30, 25, 15, 5], k=n)
    gib = rng.choices([0.5, 1, 2, 4, 8], weights=[10, 15, 30, 30, 15], k=n)
    return tuple(
        Demand(f"vm-{i}", c, int(c * g * 1024), rng.random() < 0.1)
        for i, (c, g) in enumerate(zip(cpus, gib))
    )


@pytest.mark.parametrize("provider", ["aws", "gcp"])
@pytest.mark.parametrize("mode", ["cost", "performance"])
def test_large_mixed_labs_are_within_three_percent_of_the_bound(provider: str, mode: str) -> None:
    catalogue = CATALOGUES[provider]
    request = Request(mixed_lab(1000, seed=7), optimize=mode)  # type: ignore[arg-type]
    plan = place(request, catalogue)
    assert_valid(plan, request, catalogue)
    assert plan.ratio <= 1.03
    assert plan.cost_per_hour < first_fit_decreasing(request, catalogue).cost_per_hour


@pytest.mark.parametrize("provider", ["aws", "gcp"])
def test_anti_affinity_at_scale_keeps_the_packing_tight(provider: str) -> None:
    catalogue = CATALOGUES[provider]
    demands = mixed_lab(1000, seed=3)
    groups = tuple(tuple(f"vm-{g * 3 + k}" for k in range(3)) for g in range(30))
    groups += (tuple(f"vm-{900 + k}" for k in range(40)),)  # one VM per host for 40 hosts
    for mode in ("cost", "performance"):
        request = Request(demands, optimize=mode, anti_affinity=groups)  # type: ignore[arg-type]
        plan = place(request, catalogue)
        assert_valid(plan, request, catalogue)
        assert plan.ratio <= 1.05


def test_many_distinct_shapes_are_packed_as_classes_and_stay_valid() -> None:
    rng = random.Random(11)
    demands = tuple(
        Demand(f"vm-{i}", rng.choice([1, 2, 4, 8]), rng.randint(256, 32768), rng.random() < 0.1)
        for i in range(600)
    )
    groups = tuple(tuple(f"vm-{g * 4 + k}" for k in range(4)) for g in range(10))
    for catalogue in (AWS, GCP):
        for mode in ("cost", "performance"):
            request = Request(demands, optimize=mode, anti_affinity=groups)  # type: ignore[arg-type]
            shapes = placement_module._prepare(request, catalogue).shapes
            assert len(shapes) > placement_module._MOST_SHAPES  # the class path is the one tested
            plan = place(request, catalogue)
            assert_valid(plan, request, catalogue)
            assert plan.ratio <= 1.08
            assert (
                plan.cost_per_hour <= first_fit_decreasing(request, catalogue).cost_per_hour + 1e-9
            )
