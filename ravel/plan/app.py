"""The resolved plan of one app: everything the layers below the planner read, computed once.

`resolve_app` is the single pure step between a Blueprint and the rest of ravel: placement,
the network plan (VNIs, MACs, addresses, leases, routes), which hosts carry which network, and
the exposed services with the port each gets on its host. Renderers, the publish pipeline and
the providers read this value; none of them calls into plan/network.py on its own, so one
publish plans the network exactly once and every reader sees the same answer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

from ..model.blueprint import VM, Blueprint
from .network import (NetworkPlan, NicPlan, ServiceForward, host_side_ports, hosts_on_network,
                      plan_network, service_forwards)
from .placement import Placement
from .plan import Plan


@dataclass(frozen=True)
class AppPlan:
    app: str
    blueprint: Blueprint
    plan: Plan  # host types, VM -> host, cost
    network: NetworkPlan
    carriers: Mapping[str, tuple[str, ...]]  # network -> the hosts that carry it (bridge + tunnel)
    forwards: tuple[ServiceForward, ...]  # exposed services
    host_ports: Mapping[tuple[str, int, str], int]  # (vm, port, protocol) -> port on its host
    by_vm: Mapping[str, tuple[NicPlan, ...]]  # VM -> its NICs, in blueprint order
    ordinals: Mapping[str, int]  # VM -> its position in the blueprint (names its taps)

    @property
    def placement(self) -> Placement:
        return self.plan.placement

    @property
    def hosts(self) -> list[str]:
        """Host names in plan order."""
        return [h.name for h in self.plan.placement.hosts]

    @property
    def vms(self) -> tuple[VM, ...]:
        return self.blueprint.vms

    def host_of(self, vm: str) -> str:
        return self.plan.placement.vm_host[vm]

    def nics(self, vm: str) -> tuple[NicPlan, ...]:
        return self.by_vm.get(vm, ())

    def gateways(self) -> dict[str, str]:
        return {n.name: str(n.gateway) for n in self.blueprint.networks if n.gateway is not None}


def resolve_app(bp: Blueprint, app: str, plan: Plan, vnis: Mapping[str, int]) -> AppPlan:
    """Pure and deterministic: the same blueprint, plan and VNIs give an equal AppPlan.
    `vnis` (network -> VNI) come from the state, which keeps them unique across apps."""
    net = plan_network(bp, app, vnis)
    forwards = service_forwards(bp, plan.placement, net)
    carriers = {k: tuple(v) for k, v in hosts_on_network(plan.placement, net).items()}
    by_vm: dict[str, list[NicPlan]] = {}
    for nic in net.nics:
        by_vm.setdefault(nic.vm, []).append(nic)
    return AppPlan(app, bp, plan, net, carriers, forwards, host_side_ports(forwards),
                   {vm: tuple(nics) for vm, nics in by_vm.items()},
                   {vm.name: i for i, vm in enumerate(bp.vms)})


def sketch_vnis(bp: Blueprint) -> dict[str, int]:
    """Placeholder VNIs for a plan made before any state exists (what a VM would look like,
    e.g. its machine signature, does not depend on them)."""
    return {n.name: i + 1 for i, n in enumerate(bp.networks)}
