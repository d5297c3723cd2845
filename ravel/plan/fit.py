"""Blueprint checks that need a provider's catalogue, reported as located blueprint problems."""

from __future__ import annotations

from ..errors import PlacementError, Problem
from ..model.blueprint import Blueprint
from .catalogue import Catalogue
from .mtu import check_mtu
from .placement import Demand, Request, place
from .plan import request_for


def check_fit(bp: Blueprint, catalogue: Catalogue, optimize: str | None = None) -> list[Problem]:
    """Unknown host types, VMs that fit no allowed host type even alone, and networks whose MTU
    the provider's underlay cannot carry."""
    problems: list[Problem] = check_mtu(bp, catalogue.provider)
    for i, name in enumerate(bp.placement.host_types):
        try:
            catalogue.get(name)
        except PlacementError as exc:
            path = f"placement.host_types[{i}]"
            problems.append(Problem(bp.source, *bp.where(path), path, exc.message))  # it names the provider
    if any(p.path.startswith("placement.") for p in problems):
        return problems
    base = request_for(bp, optimize)
    seen: set[tuple[int, int, bool]] = set()
    for vm in bp.vms:
        shape = (vm.cpus, vm.memory_mib, vm.nested)
        if shape in seen:
            continue
        seen.add(shape)
        # whether it fits at all, not the best plan: no exact solver (nor its import)
        alone = Request(demands=(Demand(vm.name, vm.cpus, vm.memory_mib, vm.nested),), optimize=base.optimize,
                        cpu_overcommit=base.cpu_overcommit, host_types=base.host_types, exact_s=0.0)
        try:
            place(alone, catalogue)
        except PlacementError as exc:
            path = f"vms.{vm.group}"
            problems.append(Problem(bp.source, *bp.where(path), path, exc.message))
    return problems
