"""The Plan: which hosts, which VM where, what it costs; and its JSON, which later commands reuse."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Literal

from ..model.blueprint import Blueprint
from .catalogue import Catalogue
from .placement import Demand, Placement, Request, place


@dataclass(frozen=True)
class Plan:
    blueprint: Blueprint
    provider: str
    optimize: Literal["cost", "performance"]
    placement: Placement
    catalogue: Catalogue

    @property
    def ratio(self) -> float:
        lb = self.placement.lower_bound_per_hour
        return self.placement.cost_per_hour / lb if lb > 0 else 1.0

    def host_of(self, vm: str) -> str:
        return self.placement.vm_host[vm]

    def to_dict(self) -> dict[str, Any]:
        vms = {vm.name: {"cpus": vm.cpus, "memory_mib": vm.memory_mib, "host": self.host_of(vm.name)}
               for vm in self.blueprint.vms}
        return {
            "blueprint": self.blueprint.name,
            "provider": self.provider,
            "optimize": self.optimize,
            "cost_per_hour": round(self.placement.cost_per_hour, 6),
            "lower_bound_per_hour": round(self.placement.lower_bound_per_hour, 6),
            "hosts": [
                {
                    "name": h.name,
                    "type": h.type.name,
                    "cpus": h.type.cpus,
                    "memory_mib": h.type.memory_mib,
                    "hourly_cost": h.type.hourly_cost,
                    "accel": h.accel,
                    "vms": list(h.vms),
                }
                for h in self.placement.hosts
            ],
            "vms": vms,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)


def request_for(bp: Blueprint, optimize: str | None = None) -> Request:
    mode = optimize or bp.placement.optimize
    return Request(
        demands=tuple(Demand(vm.name, vm.cpus, vm.memory_mib, vm.nested) for vm in bp.vms),
        optimize=mode,  # type: ignore[arg-type]
        cpu_overcommit=bp.placement.cpu_overcommit if mode == "cost" else 1.0,
        host_types=bp.placement.host_types,
        anti_affinity=bp.placement.anti_affinity,
        max_hosts=bp.placement.max_hosts,
    )


def make_plan(bp: Blueprint, catalogue: Catalogue, optimize: str | None = None) -> Plan:
    """Pure and deterministic: the same blueprint and catalogue always give the same plan."""
    request = request_for(bp, optimize)
    return Plan(bp, catalogue.provider, request.optimize, place(request, catalogue), catalogue)
