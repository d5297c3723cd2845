"""The blueprint as written: pydantic models that check shapes and types, key by key.

These mirror the YAML exactly (mappings of name -> VM, `count` not yet expanded). Cross-field
rules (references, address plans, collisions) live in `resolve.py`, which turns a spec into the
frozen `Blueprint` the rest of ravel uses. `ravel schema` prints this module's JSON Schema.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, WithJsonSchema

from .units import parse_mib

NAME_RE = r"^[a-z0-9]([a-z0-9-]{0,38}[a-z0-9])?$"
VM_NAME_RE = r"^[a-z0-9]([a-z0-9-]{0,30}[a-z0-9])?$"
MAC_RE = re.compile(r"^[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}$")

DISK_BUSES = ("virtio", "pvscsi", "lsilogic", "lsisas", "sata", "ide")
NIC_MODELS = ("virtio", "e1000", "e1000e", "vmxnet3", "pcnet")
IMAGE_FORMATS = ("qcow2", "vmdk", "raw", "vhd", "vhdx")
BOOT_DEVICES = ("cdrom", "disk", "network")
READY_WORDS = ("ssh", "ping", "lease", "link", "none")
USER_RE = r"^[a-z_][a-z0-9_-]{0,31}$"


def _mib(value: Any) -> int:
    return parse_mib(value)


def _mac(value: str) -> str:
    if not MAC_RE.match(value):
        raise ValueError(f"{value!r} is not a MAC address such as 52:54:00:12:34:56")
    if int(value[:2], 16) & 1:
        raise ValueError(f"{value!r} is a multicast MAC address; a NIC needs a unicast one")
    return value.lower()


_size_schema = WithJsonSchema(
    {
        "anyOf": [
            {"type": "integer", "minimum": 1, "description": "MiB"},
            {"type": "string", "pattern": r"^\d+(\.\d+)?\s*([KMGT]i?B?|[kmgt]i?b?)?$"},
        ],
        "examples": ["512MiB", "4GiB", 2048],
    }
)
Size = Annotated[int, BeforeValidator(_mib), _size_schema]
Mac = Annotated[str, AfterValidator(_mac)]
Name = Annotated[str, Field(pattern=NAME_RE)]


class _Spec(BaseModel):
    # strict: a quoted "4" for cpus or "yes" for a boolean is a mistake worth pointing at
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class DiskSpec(_Spec):
    image: str | None = Field(
        None, description="base image path (qcow2, vmdk, raw, vhd or vhdx); relative to the blueprint; "
        "read-only, the VM writes to its own overlay")
    size: Size | None = Field(None, description="size of a blank disk, e.g. 10GiB")
    bus: Literal["virtio", "pvscsi", "lsilogic", "lsisas", "sata", "ide"] = "virtio"
    format: Literal["qcow2", "vmdk", "raw", "vhd", "vhdx"] | None = Field(
        None, description="format of `image`; read from the file itself when omitted"
    )


class NicSpec(_Spec):
    network: str
    model: Literal["virtio", "e1000", "e1000e", "vmxnet3", "pcnet"] = "virtio"
    ip: str | None = Field(None, description="fixed IPv4 address inside the network's subnet")
    mac: Mac | None = Field(None, description="fixed MAC; ravel assigns one when omitted")


class BootSpec(_Spec):
    kernel: str | None = Field(None, description="direct kernel boot: the kernel file")
    initrd: str | None = Field(None, description="direct kernel boot: the initrd file")
    cmdline: str = Field("", description="direct kernel boot: the kernel command line")
    order: list[Literal["cdrom", "disk", "network"]] | None = Field(
        None, description="boot through the firmware from these devices in turn (instead of `kernel`); "
        "default: the first disk")


class CloudInitSpec(_Spec):
    user_data: str | None = Field(
        None, description="your user-data, merged with ravel's (cloud-init's merge rules): inline text "
        "(several lines) or a file relative to the blueprint")
    meta_data: dict[str, Any] = Field(default_factory=dict, description="extra meta-data keys")
    network_config: dict[str, Any] | None = Field(
        None, description="network-config (v2) to use instead of the one ravel makes from the blueprint")


class ReadyTcp(_Spec):
    tcp: int = Field(ge=1, le=65535, description="ready once this TCP port of the VM's first address accepts")


class ReadyConsole(_Spec):
    console: str = Field(description="ready once the serial console prints a line matching this regex")


class ServiceSpec(_Spec):
    port: int = Field(ge=1, le=65535, description="the port the guest listens on")
    protocol: Literal["tcp", "udp"] = "tcp"
    host_port: int | None = Field(
        None, ge=1, le=65535,
        description="the port users connect to: on 127.0.0.1 of this machine (local provider), on the "
        "host's public address (clouds); chosen when omitted",
    )
    allow: list[str] = Field(
        default_factory=list,
        description="clouds: source CIDRs the host's public port admits (the security-group/firewall "
        "rule); default: only the user's address (--ssh-from); 0.0.0.0/0 only when written here",
    )


class VmSpec(_Spec):
    description: str = ""
    cpus: int = Field(1, ge=1, le=1024)
    memory: Size = Field(512, description="guest RAM; plain integers are MiB")
    count: int = Field(1, ge=1, le=10000, description="expands `web` into web-1..web-N")
    nested: bool = Field(False, description="the guest is itself a hypervisor")
    cpu_model: str | None = Field(
        None, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$",
        description="QEMU CPU model (-cpu), e.g. Haswell-noTSX for a guest that needs one; default: host "
        "under KVM, max for nested VMs under TCG (it has SVM), else the fastest model measured under TCG")
    firmware: Literal["bios", "uefi"] = "bios"
    disks: list[DiskSpec] = Field(default_factory=list)
    nics: list[NicSpec] = Field(default_factory=list)
    boot: BootSpec | None = Field(None, description="direct kernel boot, or the firmware's boot order")
    cdroms: list[str] = Field(default_factory=list, description="ISO images attached as read-only CD drives")
    cloud_init: bool | CloudInitSpec = Field(
        False, description="attach a NoCloud seed: hostname, a user with ravel's SSH key, network "
        "configuration from the blueprint, a pinned SSH host key")
    user: str | None = Field(None, pattern=USER_RE, description="the guest user ravel logs in as "
                             "(made by the cloud-init seed); default: ravel")
    ready: Literal["ssh", "ping", "lease", "link", "none"] | ReadyTcp | ReadyConsole | None = Field(
        None, description="when the VM counts as ready (publish --wait, status); default: ssh with "
        "cloud_init, lease on a DHCP network, link with a NIC, else the console")
    uefi_vars: str | None = Field(None, description="UEFI variable store to start from (firmware: uefi)")
    agent: bool = Field(True, description="a virtio-serial channel for the QEMU guest agent (`ravel exec`, "
                        "`ravel cp --agent`)")
    services: list[ServiceSpec] = Field(default_factory=list)


class NetworkSpec(_Spec):
    description: str = ""
    subnet: str = Field(description="IPv4 CIDR, e.g. 10.0.0.0/24")
    gateway: str | None = None
    dhcp: bool = False
    dns: bool = False
    mtu: int = Field(1500, ge=576, le=9000)
    nat: bool = Field(False, description="guests reach outside through the host's uplink (masquerade)")


class PlacementSpec(_Spec):
    optimize: Literal["cost", "performance"] = "cost"
    cpu_overcommit: float = Field(2.0, ge=1.0, le=16.0, strict=False)
    host_types: list[str] = Field(default_factory=list, description="allowed host types; empty = all")
    anti_affinity: list[list[str]] = Field(
        default_factory=list, description="sets of VM or group names that must sit on distinct hosts"
    )
    max_hosts: int | None = Field(None, ge=1)


class RoutingSpec(_Spec):
    deny: list[list[str]] = Field(
        default_factory=list, description="pairs of networks that are not routed to each other"
    )


class FirewallRuleSpec(_Spec):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, populate_by_name=True)

    from_: str = Field(alias="from", description="network the traffic comes from")
    to: str = Field(description="network the traffic goes to")
    protocol: Literal["tcp", "udp", "icmp", "any"] = "any"
    ports: list[int | str] = Field(
        default_factory=list, description="tcp/udp destination ports: 80 or \"8000-8100\"; empty = all"
    )


class FirewallSpec(_Spec):
    allow: list[FirewallRuleSpec] = Field(
        default_factory=list,
        description="traffic allowed between routed networks; a direction named here allows only "
        "what its rules list (replies are always allowed)",
    )


class BlueprintSpec(_Spec):
    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        frozen=True,
        title="ravel blueprint",
        json_schema_extra={
            "description": "Top-level keys starting with `x-` are ignored (a place for YAML anchors)."
        },
    )

    name: Name
    description: str = ""
    defaults: VmSpec | None = Field(None, description="VM keys applied to every VM unless it sets them")
    networks: dict[str, NetworkSpec] = Field(default_factory=dict)
    vms: dict[str, VmSpec]
    placement: PlacementSpec = Field(default_factory=PlacementSpec)
    routing: RoutingSpec = Field(default_factory=RoutingSpec)
    firewall: FirewallSpec = Field(default_factory=FirewallSpec)


def json_schema() -> dict[str, Any]:
    schema = BlueprintSpec.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["patternProperties"] = {"^x-": {}}
    return schema
