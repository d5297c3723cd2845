"""The resolved blueprint: frozen values with `count` expanded and every reference checked."""

from __future__ import annotations

from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network
from types import MappingProxyType
from typing import Literal, Mapping

from .impair import Impair

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
    impair: Impair | None = None  # link impairment (model/impair.py)


@dataclass(frozen=True)
class Boot:
    kernel: str | None = None  # direct kernel boot; None: the firmware boots from `order`
    initrd: str | None = None
    cmdline: str = ""
    order: tuple[Literal["cdrom", "disk", "network"], ...] = ("disk",)


@dataclass(frozen=True)
class CloudInit:
    """A NoCloud seed for the VM. Mappings are kept as canonical JSON text (frozen, hashable)."""

    user_data: str | None = None  # the user's user-data text, merged with ravel's
    user_data_file: str | None = None  # where it was read from (absolute), for messages
    meta_data: str = "{}"  # JSON object: extra meta-data keys
    network_config: str | None = None  # JSON object: replaces the network-config ravel makes


@dataclass(frozen=True)
class Ready:
    """When a VM counts as ready; checked from its own host."""

    kind: Literal["ssh", "tcp", "console", "ping", "lease", "link", "none"]
    port: int | None = None  # ssh (22), tcp
    pattern: str | None = None  # console: a regex over its serial output

    def describe(self) -> str:
        if self.kind == "tcp":
            return f"tcp port {self.port}"
        if self.kind == "console":
            return f"console /{self.pattern}/"
        return self.kind


DEFAULT_USER = "ravel"


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
    cdroms: tuple[str, ...] = ()  # ISO images, absolute paths, read-only
    cloud_init: CloudInit | None = None
    user: str | None = None  # the guest user ravel logs in as (None: DEFAULT_USER with cloud_init)
    ready: Ready = Ready("console", pattern=None)  # resolved by the loader: see resolve._ready
    uefi_vars: str | None = None  # a UEFI variable store to start from (else the firmware's empty one)
    agent: bool = True  # the QEMU guest agent's channel (virtio-serial), for `ravel exec`
    cpu_model: str | None = None  # QEMU -cpu; None: render/qemu.py chooses (cpu_model_for)

    @property
    def kernel_boot(self) -> bool:
        return self.boot is not None and self.boot.kernel is not None

    @property
    def login(self) -> str | None:
        """Whom ravel logs in as: the VM's `user`, or the one ravel's seed makes."""
        return self.user or (DEFAULT_USER if self.cloud_init is not None else None)


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
class Lifetime:
    """How long an app lives, and what happens then (docs/ci.md, "Lifetimes")."""

    ttl_s: int
    action: Literal["destroy", "stop"] = "destroy"


@dataclass(frozen=True)
class Blueprint:
    name: str
    vms: tuple[VM, ...]
    networks: tuple[Network, ...] = ()
    placement: Placement = Placement()
    description: str = ""
    routing_deny: tuple[tuple[str, str], ...] = ()  # network pairs (sorted) that are not routed
    firewall: tuple[FirewallRule, ...] = ()
    lifetime: Lifetime | None = None
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
