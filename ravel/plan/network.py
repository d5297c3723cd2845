"""The network plan: MACs and addresses for every NIC, and which host needs which tunnel.

Pure: VNIs and underlay addresses come in from the caller (they are allocated in state so they
stay unique across applications); everything else is derived deterministically from names, so
re-planning an unchanged blueprint gives byte-identical results and nothing is re-applied.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Interface
from typing import Mapping

from ..model.blueprint import Blueprint
from .placement import Placement


@dataclass(frozen=True)
class NicPlan:
    vm: str
    index: int
    network: str
    model: str
    mac: str
    ip: IPv4Interface | None  # address with the network's prefix, when fixed in the blueprint


@dataclass(frozen=True)
class NetworkPlan:
    nics: tuple[NicPlan, ...]
    vni: Mapping[str, int]  # network name -> VNI

    def of_vm(self, vm: str) -> tuple[NicPlan, ...]:
        return tuple(n for n in self.nics if n.vm == vm)


def assign_mac(app: str, vm: str, index: int, taken: set[str]) -> str:
    """A locally administered unicast MAC derived from the names, bumped past collisions."""
    seed = hashlib.sha256(f"{app}/{vm}/{index}".encode()).digest()
    for bump in range(1 << 16):
        tail = int.from_bytes(seed[:3], "big") + bump
        mac = "52:54:00:" + ":".join(f"{(tail >> s) & 0xFF:02x}" for s in (16, 8, 0))
        if mac not in taken:
            return mac
    raise RuntimeError("no free MAC address")  # unreachable: 65536 tries for a few hundred NICs


def plan_network(bp: Blueprint, app: str, vnis: Mapping[str, int]) -> NetworkPlan:
    fixed = {nic.mac for vm in bp.vms for nic in vm.nics if nic.mac}
    taken = set(fixed)
    nics = []
    for vm in bp.vms:
        for i, nic in enumerate(vm.nics):
            mac = nic.mac or assign_mac(app, vm.name, i, taken)
            taken.add(mac)
            net = bp.network(nic.network)
            ip = IPv4Interface(f"{nic.ip}/{net.subnet.prefixlen}") if nic.ip else None
            nics.append(NicPlan(vm.name, i, nic.network, nic.model, mac, ip))
    return NetworkPlan(tuple(nics), dict(vnis))


def hosts_on_network(placement: Placement, net_plan: NetworkPlan) -> dict[str, list[str]]:
    """Network name -> hosts that carry at least one NIC on it (only those get a tunnel end)."""
    out: dict[str, set[str]] = {}
    for nic in net_plan.nics:
        out.setdefault(nic.network, set()).add(placement.vm_host[nic.vm])
    return {k: sorted(v) for k, v in out.items()}


def underlay_address(host_id: int) -> IPv4Address:
    """Host `n` of a local underlay: 198.18.0.0/15 (the benchmarking range) plus n."""
    if not 1 <= host_id < (1 << 17) - 1:
        raise ValueError(f"underlay host id {host_id} out of range")
    return IPv4Address("198.18.0.0") + host_id
