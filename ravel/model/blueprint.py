"""The resolved blueprint: frozen values with `count` expanded and every reference checked."""

from __future__ import annotations

from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network
from types import MappingProxyType
from typing import Literal, Mapping

Pos = tuple[int, int]


@dataclass(frozen=True)
class Network:
    name: str
    subnet: IPv4Network
    gateway: IPv4Address | None = None
    dhcp: bool = False
    dns: bool = False
    mtu: int = 1500
    nat: bool = False


@dataclass(frozen=True)
class Disk:
    bus: str = "virtio"
    image: str | None = None  # absolute path, or None for a blank disk
    format: str | None = None
    size_mib: int | None = None


@dataclass(frozen=True)
class Nic:
    network: str
    model: str = "virtio"
    ip: IPv4Address | None = None
    mac: str | None = None  # fixed by the blueprint; otherwise the network plan assigns one


@dataclass(frozen=True)
class Boot:
    kernel: str
    initrd: str | None = None
    cmdline: str = ""


@dataclass(frozen=True)
class Service:
    port: int
    protocol: Literal["tcp", "udp"] = "tcp"
    host_port: int | None = None  # fixed: 127.0.0.1 locally, the host's public address on clouds
    # clouds' source ranges; () = the user's own address (--ssh-from), never the world by default
    allow: tuple[IPv4Network, ...] = ()


@dataclass(frozen=True)
class VM:
    name: str
    group: str  # the name as written before `count` expansion
    cpus: int = 1
    memory_mib: int = 512
    nested: bool = False
    firmware: Literal["bios", "uefi"] = "bios"
    disks: tuple[Disk, ...] = ()
    nics: tuple[Nic, ...] = ()
    boot: Boot | None = None
    services: tuple[Service, ...] = ()
    description: str = ""


@dataclass(frozen=True)
class FirewallRule:
    """Allow `protocol` (and `ports`, for tcp/udp) from network `src` to network `dst`."""

    src: str
    dst: str
    protocol: Literal["tcp", "udp", "icmp", "any"] = "any"
    ports: tuple[tuple[int, int], ...] = ()  # inclusive ranges; empty = every port


@dataclass(frozen=True)
class Placement:
    optimize: Literal["cost", "performance"] = "cost"
    cpu_overcommit: float = 2.0
    host_types: tuple[str, ...] = ()
    anti_affinity: tuple[tuple[str, ...], ...] = ()  # expanded to VM names
    max_hosts: int | None = None


@dataclass(frozen=True)
class Blueprint:
    name: str
    vms: tuple[VM, ...]
    networks: tuple[Network, ...] = ()
    placement: Placement = Placement()
    description: str = ""
    routing_deny: tuple[tuple[str, str], ...] = ()  # network pairs (sorted) that are not routed
    firewall: tuple[FirewallRule, ...] = ()
    source: str = "<blueprint>"
    # dotted key path (e.g. "vms.web.disks[0].image") -> (line, column), for located errors
    # raised after loading (missing files, host-type fit)
    positions: Mapping[str, Pos] = field(default_factory=lambda: MappingProxyType({}), compare=False)

    def vm(self, name: str) -> VM:
        for vm in self.vms:
            if vm.name == name:
                return vm
        raise KeyError(name)

    def network(self, name: str) -> Network:
        for net in self.networks:
            if net.name == name:
                return net
        raise KeyError(name)

    def where(self, path: str) -> Pos:
        """Best known position of a key path, falling back to its nearest located parent."""
        probe = path
        while probe:
            if probe in self.positions:
                return self.positions[probe]
            cut = max(probe.rfind("."), probe.rfind("["))
            probe = probe[:cut] if cut > 0 else ""
        return (0, 0)
