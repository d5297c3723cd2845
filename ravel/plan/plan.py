"""The Plan: which hosts, which VM where, what it costs; and its JSON, which later commands reuse."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Literal

from ..model.blueprint import Blueprint
from .catalogue import Catalogue
from .mtu import max_guest_mtu
from .placement import QEMU_OVERHEAD_MIB, Demand, Placement, Request, place
from .sharing import ksm_hosts


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

    @property
    def memory_mib(self) -> int:
        """What the plan takes of its hosts' memory: guests, their QEMUs and every host's reserve
        (what admission on this machine counts, run/capacity.py)."""
        size = {vm.name: vm.memory_mib for vm in self.blueprint.vms}
        return sum(h.reserve_mib + sum(size[vm] + QEMU_OVERHEAD_MIB[h.accel] for vm in h.vms)
                   for h in self.placement.hosts)

    @property
    def gap(self) -> float:
        """How far the cost may be above the optimum: 0 when proven optimal."""
        return 0.0 if self.placement.optimal else max(0.0, self.ratio - 1.0)

    def ksm_hosts(self) -> dict[str, int]:
        """Hosts that turn on same-page merging: several guests of one image (sharing.py)."""
        return ksm_hosts(self.placement, {vm.name: vm for vm in self.blueprint.vms}, self.optimize)

    def notes(self) -> list[str]:
        """What the user trades, in words: VMs under TCG where the catalogue offers KVM."""
        tcg = [h for h in self.placement.hosts if h.accel == "tcg"]
        if not tcg or not any(t.nested_virt for t in self.catalogue.host_types):
            return []
        vms = sum(len(h.vms) for h in tcg)
        where = ", ".join(f"{h.name} ({h.type.name})" for h in tcg)
        if self.optimize == "cost":
            return [f"cost mode trades speed for price: {vms} VM{'s' if vms != 1 else ''} on {where} "
                    "run under TCG, about a tenth of KVM's speed; --optimize performance runs every "
                    "VM under KVM"]
        return [f"the allowed host types give no KVM: {vms} VMs on {where} run under TCG"]

    def to_dict(self) -> dict[str, Any]:
        vms = {vm.name: {"cpus": vm.cpus, "memory_mib": vm.memory_mib, "host": self.host_of(vm.name)}
               for vm in self.blueprint.vms}
        machine = self.catalogue.machine
        ksm = self.ksm_hosts()
        return {
            "blueprint": self.blueprint.name,
            "provider": self.provider,
            "optimize": self.optimize,
            "cost_per_hour": round(self.placement.cost_per_hour, 6),
            "lower_bound_per_hour": round(self.placement.lower_bound_per_hour, 6),
            "optimal": self.placement.optimal,
            "gap": round(self.gap, 6),
            **({"machine": machine.to_dict()} if machine else {}),
            "memory_mib": self.memory_mib,
            "max_mtu": max_guest_mtu(self.provider),
            "notes": self.notes(),
            "hosts": [
                {
                    "name": h.name,
                    "type": h.type.name,
                    "cpus": h.type.cpus,
                    "memory_mib": h.type.memory_mib,
                    "hourly_cost": h.type.hourly_cost,
                    "accel": h.accel,
                    "reserve": {"cpus": h.reserve_cpus, "memory_mib": h.reserve_mib},
                    "ksm": h.name in ksm,
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
