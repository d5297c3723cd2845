"""The blueprint as written: pydantic models that check shapes and types, key by key.

These mirror the YAML exactly (mappings of name -> VM, `count` not yet expanded). Cross-field
rules (references, address plans, collisions) live in `resolve.py`, which turns a spec into the
frozen `Blueprint` the rest of ravel uses. `ravel schema` prints this module's JSON Schema.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, WithJsonSchema

from .durations import parse_duration
from .impair import PERCENT_PATTERN, RATE_PATTERN, TIME_PATTERN
from .units import MAX_MIB, SIZE_PATTERN, parse_mib

NAME_MAX, VM_NAME_MAX = 40, 32  # the app name; VM and network names (after `count` too)
NAME_RE = rf"^[a-z0-9]([a-z0-9-]{{0,{NAME_MAX - 2}}}[a-z0-9])?$"
VM_NAME_RE = rf"^[a-z0-9]([a-z0-9-]{{0,{VM_NAME_MAX - 2}}}[a-z0-9])?$"
# a unicast MAC: the low bit of the first octet (multicast) is 0, i.e. its second digit is even
MAC_RE = re.compile(r"^[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}$")
UNICAST_MAC_RE = r"^[0-9a-fA-F][02468aAcCeE](:[0-9a-fA-F]{2}){5}$"
_OCTET = r"(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
IPV4_RE = rf"^{_OCTET}(\.{_OCTET}){{3}}$"
CIDR_RE = rf"^{_OCTET}(\.{_OCTET}){{3}}/(3[0-2]|[12]?[0-9])$"
PORT_RANGE_RE = r"^\s*(\d{1,5})\s*-\s*(\d{1,5})\s*$"

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
    if not re.match(UNICAST_MAC_RE, value):
        raise ValueError(f"{value!r} is a multicast MAC address; a NIC needs a unicast one")
    return value.lower()


_size_schema = WithJsonSchema(
    {
        "anyOf": [
            {"type": "integer", "minimum": 1, "maximum": MAX_MIB, "description": "MiB"},
            {"type": "string", "pattern": SIZE_PATTERN},
        ],
        "examples": ["512MiB", "4GiB", 2048],
    }
)
# the loader's own checks (resolve.py) give the messages; the schema says the same for editors
Size = Annotated[int, BeforeValidator(_mib), _size_schema]
Mac = Annotated[str, AfterValidator(_mac), WithJsonSchema({"type": "string", "pattern": UNICAST_MAC_RE})]
Name = Annotated[str, Field(pattern=NAME_RE)]
VmName = Annotated[str, WithJsonSchema({"type": "string", "pattern": VM_NAME_RE})]
NetName = Annotated[str, WithJsonSchema({"type": "string", "pattern": VM_NAME_RE})]
IPv4 = Annotated[str, WithJsonSchema({"type": "string", "pattern": IPV4_RE})]
CIDR = Annotated[str, WithJsonSchema({"type": "string", "pattern": CIDR_RE})]
Port = Annotated[int | str, WithJsonSchema({"anyOf": [
    {"type": "integer", "minimum": 1, "maximum": 65535}, {"type": "string", "pattern": PORT_RANGE_RE}]})]
Pair = Annotated[list[str], WithJsonSchema({"type": "array", "items": {"type": "string"},
                                            "minItems": 2, "maxItems": 2})]
Members = Annotated[list[str], WithJsonSchema({"type": "array", "items": {"type": "string"}, "minItems": 1})]


class _Spec(BaseModel):
    # strict: a quoted "4" for cpus or "yes" for a boolean is a mistake worth pointing at
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class DiskSpec(_Spec):
    image: str | None = Field(
        None, description="a base image: qcow2, vmdk (every flavour QEMU opens: monolithicSparse, "
        "streamOptimized, descriptor + extents), raw, vhd or vhdx; relative to the blueprint, `~` "
        "expands; read-only, the VM writes to its own overlay. A missing, unreadable or non-disk "
        "file, or one of another format than `format` says, is an error before anything is made")
    size: Size | None = Field(None, description="a blank disk of this size instead of `image`, e.g. 10GiB")
    bus: Literal["virtio", "pvscsi", "lsilogic", "lsisas", "sata", "ide"] = Field(
        "virtio", description="QEMU has no LSI Logic parallel controller: `lsilogic` and `lsisas` both "
        "run as LSI SAS 1068 (`mptsas1068`)")
    format: Literal["qcow2", "vmdk", "raw", "vhd", "vhdx"] | None = Field(
        None, description="format of `image`; read from the file itself when omitted"
    )


_time = WithJsonSchema({"type": "string", "pattern": TIME_PATTERN, "examples": ["50ms", "200us", "1s"]})
_percent = WithJsonSchema({"anyOf": [{"type": "string", "pattern": PERCENT_PATTERN},
                                     {"type": "number", "minimum": 0, "maximum": 100}],
                           "examples": ["1%", "0.1%"]})
_rate = WithJsonSchema({"type": "string", "pattern": RATE_PATTERN, "examples": ["10mbit", "512kbit"]})


class ImpairSpec(_Spec):
    """What the NIC's link does to frames (docs/netem.md); `ravel netem` changes it live."""

    delay: Annotated[str, _time] | None = Field(None, description="added to every frame the guest "
                                                "receives, so once per round trip, e.g. 50ms")
    jitter: Annotated[str, _time] | None = Field(None, description="the delay varies by up to this "
                                                 "either way (needs `delay`)")
    loss: Annotated[str | float | int, _percent] | None = Field(
        None, description="share of the frames the guest receives that are dropped, e.g. 1%")
    corrupt: Annotated[str | float | int, _percent] | None = Field(
        None, description="share of the frames the guest receives with a flipped bit")
    duplicate: Annotated[str | float | int, _percent] | None = Field(
        None, description="share of the frames the guest receives twice")
    rate: Annotated[str, _rate] | None = Field(
        None, description="bandwidth to the guest in bits per second (10mbit, 512kbit, 1gbit)")


class NicSpec(_Spec):
    network: str = Field(description="a network of this blueprint")
    model: Literal["virtio", "e1000", "e1000e", "vmxnet3", "pcnet"] = Field(
        "virtio", description="`pcnet` is AMD PCnet32, VMware's `vlance`")
    ip: IPv4 | None = Field(
        None, description="fixed address inside the network's subnet, not its gateway; a counted VM's "
        "instances count up from it. Without one, a `dhcp: true` network gives the NIC a fixed lease")
    mac: Mac | None = Field(None, description="fixed unicast MAC; ravel assigns one when omitted; a "
                            "counted VM's instances count up from it")
    impair: ImpairSpec | None = Field(None, description="link impairment on this NIC: delay, jitter, "
                                      "loss, corrupt, duplicate, rate (docs/netem.md)")


class BootSpec(_Spec):
    kernel: str | None = Field(None, description="direct kernel boot: the kernel file (a path)")
    initrd: str | None = Field(None, description="direct kernel boot: the initrd file (needs `kernel`)")
    cmdline: str = Field("", description="direct kernel boot: the kernel command line (needs `kernel`)")
    order: list[Literal["cdrom", "disk", "network"]] | None = Field(
        None, description="the firmware boots from these devices in turn, instead of a `kernel`; "
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
    protocol: Literal["tcp", "udp"] = Field("tcp", description="the guest port's protocol")
    host_port: int | None = Field(
        None, ge=1, le=65535,
        description="the port users connect to: on 127.0.0.1 of this machine (local provider), on the "
        "host's public address (clouds); a counted VM's instances count up from it; chosen once and "
        "kept when omitted",
    )
    allow: list[CIDR] = Field(
        default_factory=list,
        description="clouds: source CIDRs the host's public port admits (the security-group/firewall "
        "rule); default: only the user's address (--ssh-from); 0.0.0.0/0 only when written here",
    )


class VmDefaults(_Spec):
    """Every VM key but `count`: what `defaults:` may hold."""

    model_config = ConfigDict(title="VM defaults")

    description: str = Field("", description="free text")
    cpus: int = Field(1, ge=1, le=1024, description="vCPUs")
    memory: Size = Field(512, description="guest RAM; see Sizes")
    nested: bool = Field(False, description="the guest is itself a hypervisor (ESXi, KVM...): placed on "
                         "host types with hardware nested virtualization when the provider has them; "
                         "under TCG QEMU exposes AMD SVM")
    cpu_model: str | None = Field(
        None, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$",
        description="QEMU CPU model (-cpu), e.g. Haswell-noTSX for a guest that needs one; default: host "
        "under KVM, max for nested VMs under TCG (it has SVM), else the fastest model measured under TCG")
    firmware: Literal["bios", "uefi"] = Field(
        "bios", description="uefi: Debian's OVMF (secure boot off), with a variable store of the VM's "
        "own that survives stop/start, moves and snapshots")
    disks: list[DiskSpec] = Field(default_factory=list, description="the VM's disks, in order; each has "
                                  "`image` or `size`")
    nics: list[NicSpec] = Field(default_factory=list, description="the VM's NICs, in order")
    boot: BootSpec | None = Field(None, description="direct kernel boot, or the firmware's boot order")
    cdroms: list[str] = Field(default_factory=list, description="ISO 9660 images as read-only CD drives "
                              "(SATA on q35, IDE with IDE disks)")
    cloud_init: bool | CloudInitSpec = Field(
        False, description="true or a mapping: attach a NoCloud seed with the hostname, a user with "
        "ravel's SSH key, network configuration from the blueprint, a pinned SSH host key (docs/guests.md)")
    user: str | None = Field(None, pattern=USER_RE, description="the guest user ravel logs in as "
                             "(made by the cloud-init seed); default: ravel with cloud_init")
    ready: Literal["ssh", "ping", "lease", "link", "none"] | ReadyTcp | ReadyConsole | None = Field(
        None, description="when the VM counts as ready (publish --wait, status; docs/guests.md); default: "
        "ssh with cloud_init, lease on a DHCP network, link with a NIC, else the console")
    uefi_vars: str | None = Field(None, description="a UEFI variable store to start from instead of the "
                                  "empty one (needs `firmware: uefi`)")
    agent: bool = Field(True, description="a virtio-serial channel for the QEMU guest agent (`ravel exec`, "
                        "`ravel cp --agent`; the guest needs `qemu-guest-agent`)")
    services: list[ServiceSpec] = Field(default_factory=list, description="ports to expose "
                                        "(docs/networking.md)")


class VmSpec(VmDefaults):
    model_config = ConfigDict(title="VM")

    count: int = Field(1, ge=1, le=10000, description="expands `web` into web-1..web-N (count 1 keeps "
                       "the name); expanded names are at most 32 characters")


class NetworkSpec(_Spec):
    description: str = Field("", description="free text")
    subnet: CIDR = Field(description="IPv4 CIDR, /29 or larger, no host bits, e.g. 10.0.0.0/24")
    gateway: IPv4 | None = Field(None, description="inside the subnet, not its network or broadcast "
                                 "address; networks with one are routed to each other")
    dhcp: bool = Field(False, description="fixed leases for ravel's NICs (NICs without `ip` get one, shown "
                       "by `ravel status`); without a gateway the host serves it from the highest free "
                       "address")
    dns: bool = Field(False, description="DNS for `<vm>` and `<vm>.<app>.lab`")
    mtu: int = Field(1500, ge=576, le=9000, description="the guests' MTU (DHCP hands it out), up to 9000 "
                     "(jumbo frames) where the provider carries it: `ravel plan` says how much")
    nat: bool = Field(False, description="guests reach outside through the host's uplink (masquerade); "
                      "needs a `gateway`")


class PlacementSpec(_Spec):
    optimize: Literal["cost", "performance"] = Field(
        "cost", description="performance never overcommits CPU and keeps room on each host for itself")
    cpu_overcommit: float = Field(2.0, ge=1.0, le=16.0, description="vCPU per host CPU, cost mode only; "
                                  "memory is never overcommitted")
    host_types: list[str] = Field(default_factory=list, description="allowed host types; empty = all of "
                                  "the provider's")
    anti_affinity: list[Members] = Field(
        default_factory=list, description="sets of VM or group names that must sit on distinct hosts "
        "(a group name stands for all of its instances)"
    )
    max_hosts: int | None = Field(None, ge=1, description="at most this many hosts")


class RoutingSpec(_Spec):
    deny: list[Pair] = Field(
        default_factory=list, description="pairs of networks that are not routed to each other "
        "(default: all networks with a gateway are)"
    )


class FirewallRuleSpec(_Spec):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, populate_by_name=True)

    from_: str = Field(alias="from", description="network the traffic comes from")
    to: str = Field(description="network the traffic goes to")
    protocol: Literal["tcp", "udp", "icmp", "any"] = Field("any", description="replies always pass")
    ports: list[Port] = Field(
        default_factory=list, description="tcp/udp destination ports: 80 or \"8000-8100\"; empty = all"
    )


class FirewallSpec(_Spec):
    allow: list[FirewallRuleSpec] = Field(
        default_factory=list,
        description="traffic allowed between routed networks; a direction named here allows only "
        "what its rules list (replies always pass)",
    )


def _duration(value: Any) -> int:
    return parse_duration(value)


Duration = Annotated[int, BeforeValidator(_duration), WithJsonSchema({
    "anyOf": [{"type": "integer", "minimum": 1, "description": "seconds"},
              {"type": "string", "pattern": r"^\s*(\d+|(\d+(\.\d+)?[smhdSMHD])+)\s*$"}],
    "examples": ["20s", "90m", "2h", "1d", "1h30m"]})]


class LifetimeSpec(_Spec):
    ttl: Duration = Field(description="how long the app lives after its first publish (20s, 90m, 2h, 1d); "
                          "`ravel publish --ttl` overrides it, `ravel extend` pushes it back")
    action: Literal["destroy", "stop"] = Field(
        "destroy", description="what happens at expiry, with no ravel process needed: destroy the app "
        "(cloud hosts terminate themselves) or stop it (disks kept)")


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

    name: Name = Field(description=f"lowercase letters, digits and dashes, starting and ending with a "
                       f"letter or digit, at most {NAME_MAX} characters")
    description: str = Field("", description="free text")
    defaults: VmDefaults | None = Field(None, description="VM keys (all but `count`) applied to every VM "
                                        "that does not set them")
    networks: dict[NetName, NetworkSpec] = Field(
        default_factory=dict, description=f"network name (like a VM name, at most {VM_NAME_MAX} "
        "characters) -> settings")
    vms: dict[VmName, VmSpec] = Field(
        min_length=1, description=f"VM name (lowercase letters, digits and dashes, at most {VM_NAME_MAX} "
        "characters) -> settings; at least one")
    placement: PlacementSpec = Field(default_factory=PlacementSpec, description="how VMs are packed onto "
                                     "hosts (docs/architecture.md, plan)")
    routing: RoutingSpec = Field(default_factory=RoutingSpec, description="routing between the networks "
                                 "(docs/networking.md)")
    firewall: FirewallSpec = Field(default_factory=FirewallSpec, description="traffic allowed between "
                                   "routed networks (docs/networking.md)")
    lifetime: LifetimeSpec | None = Field(None, description="an expiry the app enforces on itself: "
                                          "`{ttl: 2h, action: destroy|stop}`")


def json_schema() -> dict[str, Any]:
    schema = BlueprintSpec.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["patternProperties"] = {"^x-": {}}
    for key in ("vms", "networks"):  # name -> settings: a name that does not fit is refused
        prop = schema["properties"][key]
        (pattern, settings), = prop.pop("patternProperties").items()
        prop["propertyNames"] = {"pattern": pattern}
        prop["additionalProperties"] = settings
    return schema
