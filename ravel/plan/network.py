"""The network plan: MACs and addresses for every NIC, and which host needs which tunnel.

Pure: VNIs and underlay addresses come in from the caller (they are allocated in state so they
stay unique across applications); everything else is derived deterministically from names, so
re-planning an unchanged blueprint gives byte-identical results and nothing is re-applied.

It also plans the app's network services (docs/networking.md): the address every host puts on
a network's bridge (the gateway, or a service address for DHCP/DNS), the gateway's MAC, which
networks are routed to each other, and an address for every NIC on a `dhcp: true` network that
the blueprint left without one (a fixed lease, shown in `ravel status`).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Interface
from typing import Mapping

from ..model.blueprint import Blueprint, Network
from .placement import Placement


@dataclass(frozen=True)
class NicPlan:
    vm: str
    index: int
    network: str
    model: str
    mac: str
    ip: IPv4Interface | None  # address with the network's prefix: fixed in the blueprint, or assigned
    assigned: bool = False  # ravel chose `ip` (a fixed lease on a `dhcp: true` network)
    dhcp: bool = False  # the network serves DHCP: the guest asks for `ip` instead of being told


@dataclass(frozen=True)
class NetService:
    """What every host carrying a network puts on its bridge: one address and MAC, the same on
    every host (an anycast gateway), so a guest's first hop is always its own host."""

    address: IPv4Interface
    mac: str
    gateway: bool  # `address` is the blueprint's gateway (routes), not only a DHCP/DNS server


@dataclass(frozen=True)
class NetworkPlan:
    nics: tuple[NicPlan, ...]
    vni: Mapping[str, int]  # network name -> VNI
    services: Mapping[str, NetService] = field(default_factory=dict)  # network name -> host side
    routes: tuple[tuple[str, str], ...] = ()  # network pairs (sorted) routed to each other

    def of_vm(self, vm: str) -> tuple[NicPlan, ...]:
        return tuple(n for n in self.nics if n.vm == vm)

    def routed(self, a: str, b: str) -> bool:
        return (min(a, b), max(a, b)) in self.routes

    def service_address(self, vm: str) -> NicPlan | None:
        """The NIC an exposed service of `vm` is reached on: its first with a known address."""
        return next((n for n in self.of_vm(vm) if n.ip is not None), None)


def assign_mac(app: str, vm: str, index: int, taken: set[str]) -> str:
    """A locally administered unicast MAC derived from the names, bumped past collisions."""
    seed = hashlib.sha256(f"{app}/{vm}/{index}".encode()).digest()
    for bump in range(1 << 16):
        tail = int.from_bytes(seed[:3], "big") + bump
        mac = "52:54:00:" + ":".join(f"{(tail >> s) & 0xFF:02x}" for s in (16, 8, 0))
        if mac not in taken:
            return mac
    raise RuntimeError("no free MAC address")  # unreachable: 65536 tries for a few hundred NICs


def gateway_mac(app: str, network: str) -> str:
    """The anycast gateway's MAC on `network`: the same on every host, locally administered."""
    h = hashlib.sha256(f"gateway/{app}/{network}".encode()).digest()
    return "02:72:76:" + ":".join(f"{b:02x}" for b in h[:3])


def egress_mac(app: str, host: str, network: str) -> str:
    """The source MAC a host's own frames carry over the tunnel (the anycast MAC is rewritten to
    it), so peers' bridges never see their own address arriving from a tunnel."""
    h = hashlib.sha256(f"egress/{app}/{host}/{network}".encode()).digest()
    return "06:72:76:" + ":".join(f"{b:02x}" for b in h[:3])


def _usable(net: Network) -> int:
    return net.subnet.num_addresses - 2


def _service_address(net: Network, taken: set[IPv4Address]) -> IPv4Address:
    """A network without a gateway that still needs a host address (DHCP, DNS, a service to
    forward to): the highest usable address no NIC holds."""
    top = int(net.subnet.broadcast_address) - 1
    for value in range(top, int(net.subnet.network_address), -1):
        addr = IPv4Address(value)
        if addr not in taken:
            return addr
    raise ValueError(f"network {net.name!r} has no free address")  # resolve.py checks room first


def assign_ip(net: Network, vm: str, index: int, taken: set[IPv4Address]) -> IPv4Address:
    """A fixed lease for a NIC the blueprint gave no `ip`: a slot derived from the VM's name,
    probing upwards past taken ones, so adding or removing another VM moves nobody else."""
    size = _usable(net)
    seed = int.from_bytes(hashlib.sha256(f"{vm}/{index}".encode()).digest()[:8], "big")
    first = int(net.subnet.network_address) + 1
    for probe in range(size):
        addr = IPv4Address(first + (seed + probe) % size)
        if addr not in taken:
            return addr
    raise ValueError(f"network {net.name!r} has no free address")  # resolve.py checks room first


def plan_network(bp: Blueprint, app: str, vnis: Mapping[str, int]) -> NetworkPlan:
    fixed = {nic.mac for vm in bp.vms for nic in vm.nics if nic.mac}
    taken = set(fixed)
    used: dict[str, set[IPv4Address]] = {n.name: set() for n in bp.networks}
    for n in bp.networks:
        if n.gateway is not None:
            used[n.name].add(n.gateway)
    for vm in bp.vms:
        for nic in vm.nics:
            if nic.ip is not None:
                used[nic.network].add(nic.ip)

    # the host side of each network that needs one
    needs = {n.name for n in bp.networks if n.gateway is not None or n.dhcp or n.dns}
    for vm in bp.vms:
        if vm.services:
            target = next((nic for nic in vm.nics if nic.ip is not None or bp.network(nic.network).dhcp), None)
            if target is not None:
                needs.add(target.network)
        if vm.ready.kind in ("ssh", "tcp", "ping") and vm.nics:
            needs.add(vm.nics[0].network)  # the host checks readiness from an address of its own there
    services: dict[str, NetService] = {}
    for n in bp.networks:
        if n.name not in needs:
            continue
        addr = n.gateway if n.gateway is not None else _service_address(n, used[n.name])
        used[n.name].add(addr)
        services[n.name] = NetService(IPv4Interface(f"{addr}/{n.subnet.prefixlen}"),
                                      gateway_mac(app, n.name), n.gateway is not None)

    nics = []
    for vm in bp.vms:
        for i, nic in enumerate(vm.nics):
            mac = nic.mac or assign_mac(app, vm.name, i, taken)
            taken.add(mac)
            net = bp.network(nic.network)
            addr, assigned = nic.ip, False
            if addr is None and net.dhcp:
                addr, assigned = assign_ip(net, vm.name, i, used[net.name]), True
                used[net.name].add(addr)
            ip = IPv4Interface(f"{addr}/{net.subnet.prefixlen}") if addr else None
            nics.append(NicPlan(vm.name, i, nic.network, nic.model, mac, ip, assigned, net.dhcp))

    gated = sorted(n.name for n in bp.networks if n.gateway is not None)
    routes = tuple((a, b) for i, a in enumerate(gated) for b in gated[i + 1:]
                   if (a, b) not in bp.routing_deny)
    return NetworkPlan(tuple(nics), dict(vnis), services, routes)


def hosts_on_network(placement: Placement, net_plan: NetworkPlan) -> dict[str, list[str]]:
    """Network name -> hosts that carry it: those with a NIC on it, and, because every host
    routes its own guests' traffic (a distributed router), those with a NIC on a network routed
    to it. Only these get a bridge and a tunnel end."""
    direct: dict[str, set[str]] = {}
    for nic in net_plan.nics:
        direct.setdefault(nic.network, set()).add(placement.vm_host[nic.vm])
    out = {k: set(v) for k, v in direct.items()}
    for a, b in net_plan.routes:
        if a in direct and b in direct:  # a route to a network with no NIC anywhere carries nothing
            out[a] |= direct[b]
            out[b] |= direct[a]
    return {k: sorted(v) for k, v in out.items()}


@dataclass(frozen=True)
class ServiceForward:
    """A guest service to expose: `protocol`/`port` on `target` (the guest's address, reached
    from inside its host), listening on `host_port` when fixed, else on a port chosen once."""

    vm: str
    host: str
    port: int
    protocol: str
    target: str
    host_port: int | None = None
    allow: tuple[str, ...] = ()


def service_forwards(bp: Blueprint, placement: Placement, net: NetworkPlan) -> tuple[ServiceForward, ...]:
    out = []
    for vm in bp.vms:
        nic = net.service_address(vm.name)
        if nic is None or nic.ip is None:
            continue  # resolve.py rejects services on a VM without a known address
        for s in vm.services:
            out.append(ServiceForward(vm.name, placement.vm_host[vm.name], s.port, s.protocol,
                                      str(nic.ip.ip), s.host_port, tuple(str(a) for a in s.allow)))
    return tuple(out)


# What a host's own uplink already serves: never a DNAT'd exposed port (SSH to the host, the
# tunnels). resolve.py rejects a fixed host_port among them.
RESERVED_HOST_PORTS = frozenset({(22, "tcp"), (4789, "udp")})
HOST_PORT_FIRST, HOST_PORT_SPAN = 20000, 20000  # where a port is chosen when the guest's is taken


def host_side_ports(forwards: tuple[ServiceForward, ...] | list[ServiceForward]) -> dict[tuple[str, int, str], int]:
    """(vm, port, protocol) -> the port on its host's uplink (the host's public address on
    clouds) that leads to it: the fixed `host_port`, else the guest's own port when no other
    service of that host holds it, else a port from 20000-39999 derived from the names, probing
    upwards. Only names decide, so re-planning gives the same ports and a service added later
    moves nobody who already has one (except a guest port a fixed host_port now claims)."""
    taken: dict[str, set[tuple[int, str]]] = {}
    out: dict[tuple[str, int, str], int] = {}
    for fw in forwards:
        if fw.host_port is not None:
            taken.setdefault(fw.host, set(RESERVED_HOST_PORTS)).add((fw.host_port, fw.protocol))
            out[(fw.vm, fw.port, fw.protocol)] = fw.host_port
    for fw in forwards:
        key = (fw.vm, fw.port, fw.protocol)
        if key in out:
            continue
        used = taken.setdefault(fw.host, set(RESERVED_HOST_PORTS))
        port = fw.port
        if (port, fw.protocol) in used:
            seed = int.from_bytes(hashlib.sha256(f"{fw.vm}/{fw.port}/{fw.protocol}".encode()).digest()[:4], "big")
            port = next(HOST_PORT_FIRST + (seed + i) % HOST_PORT_SPAN for i in range(HOST_PORT_SPAN)
                        if (HOST_PORT_FIRST + (seed + i) % HOST_PORT_SPAN, fw.protocol) not in used)
        used.add((port, fw.protocol))
        out[key] = port
    return out


def underlay_address(host_id: int) -> IPv4Address:
    """Host `n` of a local underlay: 198.18.0.0/15 (the benchmarking range) plus n."""
    if not 1 <= host_id < (1 << 17) - 1:
        raise ValueError(f"underlay host id {host_id} out of range")
    return IPv4Address("198.18.0.0") + host_id
