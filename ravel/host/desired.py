"""The desired-state document (version 1): parsed into frozen values, every problem reported.

The document is produced by ravel's renderer; this module re-checks it on the host because a
bad document must fail before any side effect, with a message naming the key at fault.

Each record declares its document fields with ``_f`` (kind, default, checks); one walker
(``_read``) reads any record from its JSON object and ``to_doc`` writes it back. A check that
needs two fields of a record is its ``_checked`` method; one that needs several records is in
``_check_links`` / ``_check_router``, run once the whole document is read.
"""

from __future__ import annotations

import ipaddress
import os
import re
from dataclasses import MISSING, astuple, dataclass, field, fields, is_dataclass, replace
from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple

from . import DESIRED_VERSION

VXLAN_PORT = 4789
ZERO_MAC = "00:00:00:00:00:00"
DISK_BASE_FORMATS = ("qcow2", "vmdk", "raw", "vpc", "vhdx")  # QEMU's names (vpc: VHD)
PROTOCOLS = ("tcp", "udp", "icmp", "any")
# the host's own uplink ports: an exposed port there would take SSH or the tunnels away
RESERVED_PORTS = ((22, "tcp"), (VXLAN_PORT, "udp"))

_IFNAME = re.compile(r"^[A-Za-z0-9_.:-]{1,15}$")
_VMNAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
_MAC = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")
_DOMAIN = re.compile(r"^[a-z0-9]([a-z0-9-]{0,62})(\.[a-z0-9]([a-z0-9-]{0,62}))*$")
_NETDEV = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]{0,31}$")
_HOSTNAME = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9-]{0,62})$")


class DesiredError(ValueError):
    """The desired document is invalid; ``problems`` lists every fault as 'path: message'."""

    def __init__(self, problems: List[str]) -> None:
        self.problems = list(problems)
        super().__init__("invalid desired state: " + "; ".join(self.problems))


class _Checker:
    def __init__(self) -> None:
        self.problems: List[str] = []
        # id(list item) -> its path: checks after the walk name an item where the document has
        # it, even when an earlier item was dropped as unreadable
        self.where: Dict[int, str] = {}

    def bad(self, path: str, message: str) -> None:
        self.problems.append(f"{path}: {message}")

    def at(self, item: Any) -> str:
        return self.where[id(item)]

    def known(self, obj: Dict[str, Any], path: str, keys: Iterable[str]) -> None:
        """Unknown keys are errors (a typo must not silently drop state); "_"-keys are free."""
        allowed = set(keys)
        for key in obj:
            if key not in allowed and not str(key).startswith("_"):
                self.bad(_at(path, str(key)), f"unknown key (known: {', '.join(sorted(allowed))})")


def _at(path: str, key: str) -> str:
    return f"{path}.{key}" if path and key else path or key


# -- field checks: (checker, value, path) -> the value to keep; they see present, well-typed values

_Check = Callable[[_Checker, Any, str], Any]


def _rule(ok: Callable[[Any], Any], message: str) -> _Check:
    """Keep the value; report ``message`` (``{v}`` is the value) when not ``ok(value)``."""
    def check(c: _Checker, value: Any, path: str) -> Any:
        if not ok(value):
            c.bad(path, message.format(v=value))
        return value
    return check


_ifname = _rule(_IFNAME.match, "{v!r} is not a valid interface name (1-15 of A-Z a-z 0-9 _ . : -)")
_vmname = _rule(_VMNAME.match, "{v!r} must be 1-64 of A-Z a-z 0-9 _ . -")
_hostname = _rule(_HOSTNAME.match, "{v!r} is not a host name")
_domain = _rule(_DOMAIN.match, "{v!r} is not a DNS domain")
_abspath = _rule(lambda v: os.path.isabs(v) and "\0" not in v, "{v!r} must be an absolute path")
_mtu = _rule(lambda v: 68 <= v <= 65535, "{v} is outside 68..65535")
_vni = _rule(lambda v: 1 <= v <= 0xFFFFFF, "{v} is outside 1..16777215")
_port = _rule(lambda v: 1 <= v <= 65535, "{v} is outside 1..65535")
_positive = _rule(lambda v: v > 0, "must be positive")
_protocol = _rule(lambda v: v in PROTOCOLS, "{v!r} is not one of " + ", ".join(PROTOCOLS))
_tcp_udp = _rule(lambda v: v in ("tcp", "udp"), "{v!r} is not tcp or udp")
_version = _rule(lambda v: v == DESIRED_VERSION,
                 "unsupported version {v}, this runtime speaks " + str(DESIRED_VERSION))


def _ip(c: _Checker, value: Any, path: str) -> str:
    """An IP address in its canonical text; '' when it is none (later checks skip it)."""
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        c.bad(path, f"{value!r} is not an IP address")
        return ""


def _mac(bad: str = "{v!r} is not a MAC address", group: str = "") -> _Check:
    """A MAC address in lower case; ``group``, when given, rejects the zero and group MACs (no
    host has them)."""
    def check(c: _Checker, value: str, path: str) -> str:
        mac = value.lower()
        if not _MAC.match(mac):
            c.bad(path, bad.format(v=mac))
        elif group and (mac == ZERO_MAC or int(mac[:2], 16) & 1):
            c.bad(path, group.format(v=mac))
        return mac
    return check


_gateway_mac = _mac("{v!r} is not a unicast MAC address", "{v!r} is not a unicast MAC address")


def _run_dir(c: _Checker, value: str, path: str) -> str:
    _abspath(c, value, path)
    value = os.path.normpath(value)
    if value == "/":
        c.bad(path, "must not be /")  # destroy removes it
    return value


def _argv(c: _Checker, value: Tuple[Any, ...], path: str) -> Tuple[Any, ...]:
    if not value:
        c.bad(path, "must not be empty")
    elif not all(isinstance(a, str) and "\0" not in a for a in value):
        c.bad(path, "must be a list of strings")
    return value


def _host_address(c: _Checker, value: str, path: str) -> str:
    """An interface address with its prefix, a usable IPv4 host of its subnet ('' otherwise)."""
    try:
        iface = ipaddress.ip_interface(value)
    except ValueError:
        c.bad(path, f"{value!r} is not an address with a prefix (10.0.0.1/24)")
        return ""
    if iface.version != 4 or iface.ip in (iface.network.network_address,
                                          iface.network.broadcast_address):
        c.bad(path, f"{value!r} must be a usable IPv4 host address")
        return ""
    return value


def _once(c: _Checker, value: Tuple[Any, ...], path: str) -> Tuple[Any, ...]:
    return tuple(dict.fromkeys(value))  # the same address twice means nothing more


def _fdb_once(c: _Checker, entries: Tuple[FdbEntry, ...], path: str) -> Tuple[FdbEntry, ...]:
    """A MAC has one tunnel destination."""
    seen = set()
    for e in entries:
        if not (e.mac and e.dst):
            continue  # reported already
        if e.mac in seen:
            c.bad(f"{c.at(e)}.mac", f"{e.mac!r} is listed twice")
        seen.add(e.mac)
    return entries


# -- item readers, for lists of something else than records: (checker, item, path) -> value,
#    None drops the item

def _netdev(c: _Checker, value: Any, path: str) -> Optional[str]:
    if isinstance(value, str) and _NETDEV.match(value):
        return value
    c.bad(path, f"{value!r} is not a -netdev id (net0, net1...)")
    return None


def _peer(c: _Checker, value: Any, path: str) -> Optional[str]:
    if not isinstance(value, str):
        c.bad(path, "must be a string")
        return None
    return _ip(c, value, path) or None


def _deny(c: _Checker, value: Any, path: str) -> Optional[str]:
    try:
        if isinstance(value, str):
            return str(ipaddress.ip_network(value))
    except ValueError:
        pass
    c.bad(path, f"{value!r} is not an address or network (198.18.0.0/16, 10.0.0.5)")
    return None


def _pair(ok: Callable[[Any, Any], bool], message: str) -> _Check:
    """A JSON pair [a, b] with ok(a, b), kept as a tuple."""
    def read(c: _Checker, value: Any, path: str) -> Optional[Tuple[Any, Any]]:
        if isinstance(value, list) and len(value) == 2 and ok(*value):
            return (value[0], value[1])
        c.bad(path, message)
        return None
    return read


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


_route = _pair(lambda a, b: isinstance(a, str) and isinstance(b, str) and a != b,
               "must be a pair of two different network names")
_port_range = _pair(lambda lo, hi: _is_int(lo) and _is_int(hi) and 1 <= lo <= hi <= 65535,
                    "must be [low, high] with 1 <= low <= high <= 65535")


# -- the field table ------------------------------------------------------------------------

@dataclass(frozen=True)
class _Field:
    kind: Any  # str | int | bool | tuple (a JSON list) | a record class (a JSON object)
    key: str  # the document's key, when not the attribute's name
    required: bool
    absent: Any  # the value of a missing optional key, and of a wrongly typed one
    checks: Tuple[_Check, ...]
    item: Any  # tuple: each item's record class or reader; None keeps items as they are
    pairs: bool  # tuple of records kept as plain tuples of their fields (Router.names)
    sparse: bool  # to_doc leaves the key out when empty, as the renderer does

    @property
    def fallback(self) -> Any:
        """What a missing required or a wrongly typed value reads as (the document is bad by
        then; later checks must simply not trip over it)."""
        if not self.required:
            return self.absent
        return {str: "", int: 0, bool: False, tuple: ()}.get(self.kind)


def _f(kind: Any, default: Any = MISSING, *, check: Any = (), key: str = "", item: Any = None,
       absent: Any = MISSING, required: Optional[bool] = None, pairs: bool = False,
       sparse: bool = False) -> Any:
    """A record field and its place in the document. Without a default the key is required,
    unless ``absent`` says what its absence means; ``check`` is one check or a tuple of them."""
    if required is None:
        required = default is MISSING and absent is MISSING
    if absent is MISSING:
        absent = None if default is MISSING else default
    checks = check if isinstance(check, tuple) else (check,)
    spec = _Field(kind, key, required, absent, checks, item, pairs, sparse)
    return field(default=default, metadata={"doc": spec})


def _table(cls: type) -> List[Tuple[str, str, _Field]]:
    """(attribute, document key, field) of a record class."""
    return [(f.name, f.metadata["doc"].key or f.name, f.metadata["doc"]) for f in fields(cls)]


# -- the records --------------------------------------------------------------------------

@dataclass(frozen=True)
class Underlay:
    device: str = _f(str, check=_ifname)
    address: str = _f(str, check=_ip)
    mtu: Optional[int] = _f(int, None, check=_mtu)
    # underlay addresses (networks) that guests' forwarded traffic must never reach: other
    # hosts, this machine's own end of a local underlay... (docs/networking.md, "Fences")
    deny: Tuple[str, ...] = _f(tuple, (), item=_deny, sparse=True)

    def _checked(self, bad: Callable[[str, str], None]) -> Underlay:
        """The fence is in the underlay's family (a v6 entry would never match), each entry once."""
        family = ipaddress.ip_address(self.address).version if self.address else 0
        deny: List[str] = []
        for j, net in enumerate(self.deny):
            if family and ipaddress.ip_network(net).version != family:
                bad(f"deny[{j}]", f"{net} is not IPv{family} like the underlay address "
                                  f"{self.address}")
            elif net not in deny:
                deny.append(net)
        return replace(self, deny=tuple(deny))


@dataclass(frozen=True)
class FdbEntry:
    mac: str = _f(str, check=_mac(group="{v!r} must be a unicast MAC"))
    dst: str = _f(str, check=_ip)


@dataclass(frozen=True)
class Network:
    name: str = _f(str)
    vni: int = _f(int, check=_vni)
    bridge: str = _f(str, check=_ifname)
    vxlan: str = _f(str, check=_ifname)
    mtu: int = _f(int, 1500, check=_mtu)
    peers: Tuple[str, ...] = _f(tuple, (), item=_peer, check=_once)
    fdb: Tuple[FdbEntry, ...] = _f(tuple, (), item=FdbEntry, check=_fdb_once)


_percent = _rule(lambda v: 0 <= v <= 100, "{v} is outside 0..100 (percent)")
_micros = _rule(lambda v: 0 <= v <= 60_000_000, "{v} is outside 0..60000000 microseconds")
_kbit = _rule(lambda v: v == 0 or 8 <= v <= 100_000_000, "{v} is outside 8..100000000 kbit/s")


def _number(c: _Checker, value: Any, path: str) -> float:
    return float(value)


@dataclass(frozen=True)
class Impair:
    """Link impairment on a tap (netem.py): frames to the guest are delayed, lost, corrupted,
    duplicated (netem) and shaped (tbf); frames from it are policed to the same rate."""
    delay_us: int = _f(int, 0, check=_micros, sparse=True)
    jitter_us: int = _f(int, 0, check=_micros, sparse=True)
    loss: float = _f((int, float), 0.0, check=(_number, _percent), sparse=True)
    corrupt: float = _f((int, float), 0.0, check=(_number, _percent), sparse=True)
    duplicate: float = _f((int, float), 0.0, check=(_number, _percent), sparse=True)
    rate_kbit: int = _f(int, 0, check=_kbit, sparse=True)

    def _checked(self, bad: Callable[[str, str], None]) -> Impair:
        if self.jitter_us > self.delay_us:
            bad("jitter_us", "is more than delay_us")
        return self


@dataclass(frozen=True)
class Tap:
    name: str = _f(str, check=_ifname)
    bridge: str = _f(str)
    mtu: int = _f(int, 1500, check=_mtu)
    impair: Optional[Impair] = _f(Impair, None)


@dataclass(frozen=True)
class Disk:
    path: str = _f(str, check=_abspath)
    base: Optional[str] = _f(str, None, check=_abspath)
    base_format: Optional[str] = _f(str, None)
    size_mib: Optional[int] = _f(int, None, check=_positive)

    def _checked(self, bad: Callable[[str, str], None]) -> Disk:
        """An overlay on a base image (of a known format, qcow2 unless told) or a blank disk."""
        if self.base is None and self.size_mib is None:
            bad("", "needs either base (an overlay) or size_mib (a blank disk)")
        if self.base is not None and self.size_mib is not None:
            bad("", "has both base and size_mib; give one")
        fmt = None
        if self.base is not None:
            fmt = self.base_format or "qcow2"
            if fmt not in DISK_BASE_FORMATS:
                bad("base_format", f"{fmt!r} is not one of {', '.join(DISK_BASE_FORMATS)}")
        return replace(self, base_format=fmt)


@dataclass(frozen=True)
class VM:
    name: str = _f(str, check=_vmname)
    running: bool = _f(bool, absent=True)
    argv: Tuple[str, ...] = _f(tuple, check=_argv)
    pidfile: str = _f(str, check=_abspath)
    qmp: str = _f(str, check=_abspath)
    disks: Tuple[Disk, ...] = _f(tuple, (), item=Disk)
    # a saved memory state to resume from instead of booting, the first time only (resume.py)
    incoming: Optional[str] = _f(str, None, check=_abspath)
    # stopping it (stop, a restart for a new configuration, a move): the guest is asked to shut
    # down (ACPI power button) and given this long to flush its disks before power is pulled
    shutdown_s: int = _f(int, 0, check=_rule(lambda v: 0 <= v <= 3600, "{v!r} is not 0..3600 seconds"),
                         sparse=True)
    # NICs whose cable is pulled (QMP set_link off), by their -netdev id: the guest sees no carrier
    links_down: Tuple[str, ...] = _f(tuple, (), item=_netdev, check=_once, sparse=True)

    def _checked(self, bad: Callable[[str, str], None]) -> VM:
        if self.argv and all(isinstance(a, str) for a in self.argv):
            if "-daemonize" not in self.argv:
                bad("argv", "must include -daemonize (the runtime waits for QEMU's init)")
            if self.pidfile and not any(self.pidfile in a for a in self.argv):
                bad("argv", f"must pass the pidfile {self.pidfile!r} (-pidfile ...)")
        if "-incoming" in self.argv:  # the runtime adds it, the first time only
            bad("argv", "must not include -incoming (give the state file as incoming)")
        return self


@dataclass(frozen=True)
class RouterInterface:
    """The host's side of one network: an address (the same on every host) and the rest."""
    network: str = _f(str)
    bridge: str = _f(str)
    vxlan: str = _f(str)
    address: str = _f(str, check=_host_address)  # "10.0.0.1/24"
    mac: str = _f(str, check=_gateway_mac)  # the anycast gateway MAC, the same on every host
    egress_mac: str = _f(str, check=_gateway_mac)  # this host's own source MAC on the tunnel
    gateway: bool = _f(bool, True)  # guests route through `address`
    dhcp: bool = _f(bool, False)
    dns: bool = _f(bool, False)
    nat: bool = _f(bool, False)
    mtu: int = _f(int, 1500, check=_mtu)

    def _checked(self, bad: Callable[[str, str], None]) -> RouterInterface:
        if self.nat and not self.gateway:
            bad("nat", "needs gateway: true (guests send outside traffic to the gateway)")
        return self


@dataclass(frozen=True)
class Allow:
    src: str = _f(str, key="from")  # network names
    dst: str = _f(str, key="to")
    protocol: str = _f(str, absent="any", check=_protocol)  # tcp | udp | icmp | any
    ports: Tuple[Tuple[int, int], ...] = _f(tuple, (), item=_port_range)

    def _checked(self, bad: Callable[[str, str], None]) -> Allow:
        if self.ports and self.protocol not in ("tcp", "udp"):
            bad("ports", f"ports need protocol tcp or udp, not {self.protocol}")
        return self


@dataclass(frozen=True)
class Lease:
    network: str = _f(str)
    mac: str = _f(str, check=_mac())
    ip: str = _f(str, check=_ip)
    name: str = _f(str, check=_hostname)


@dataclass(frozen=True)
class _Name:
    """One ``router.names`` entry; Router keeps them as (name, ip) pairs."""
    name: str = _f(str, check=_hostname)
    ip: str = _f(str, check=_ip)


@dataclass(frozen=True)
class Expose:
    """An exposed service: `protocol`/`port` on the underlay address, DNAT'd to to:to_port."""
    vm: str = _f(str, check=_vmname)
    protocol: str = _f(str, check=_tcp_udp)  # tcp | udp
    port: int = _f(int, check=_port)
    to: str = _f(str, check=_ip)
    to_port: int = _f(int, check=_port)


@dataclass(frozen=True)
class Router:
    domain: str = _f(str, check=_domain)
    interfaces: Tuple[RouterInterface, ...] = _f(tuple, (), item=RouterInterface)
    # network pairs routed to each other, sorted
    routes: Tuple[Tuple[str, str], ...] = _f(tuple, (), item=_route)
    allow: Tuple[Allow, ...] = _f(tuple, (), item=Allow)
    leases: Tuple[Lease, ...] = _f(tuple, (), item=Lease)
    names: Tuple[Tuple[str, str], ...] = _f(tuple, (), item=_Name, pairs=True)  # (name, ip)
    expose: Tuple[Expose, ...] = _f(tuple, (), item=Expose, sparse=True)

    def interface(self, network: str) -> Optional[RouterInterface]:
        return next((i for i in self.interfaces if i.network == network), None)


@dataclass(frozen=True)
class Desired:
    app: str = _f(str, check=_vmname)
    run_dir: str = _f(str, check=_run_dir)
    host: str = _f(str, "")
    underlay: Optional[Underlay] = _f(Underlay, None)
    networks: Tuple[Network, ...] = _f(tuple, (), item=Network)
    taps: Tuple[Tap, ...] = _f(tuple, (), item=Tap)
    vms: Tuple[VM, ...] = _f(tuple, (), item=VM)
    version: int = _f(int, DESIRED_VERSION, required=True, check=_version)
    router: Optional[Router] = _f(Router, None)  # this host's piece of the app's network services
    # several guests of one base image here: the kernel's same-page merging on (ksm.py)
    ksm: bool = _f(bool, False, sparse=True)

    def link_kinds(self) -> Dict[str, str]:
        """Every link this document wants, name -> kind ('bridge' | 'vxlan' | 'tap')."""
        kinds: Dict[str, str] = {}
        for net in self.networks:
            kinds[net.bridge] = "bridge"
            kinds[net.vxlan] = "vxlan"
        for tap in self.taps:
            kinds[tap.name] = "tap"
        return kinds


@dataclass(frozen=True)
class _Target:
    """``destroy``'s short form."""
    app: str = _f(str)
    run_dir: str = _f(str, check=_run_dir)


# -- reading and writing by the table -------------------------------------------------------

def _read(c: _Checker, cls: type, raw: Any, path: str, also: Tuple[str, ...] = ()) -> Any:
    """One JSON object into a record of ``cls``; None when it is not an object."""
    if not isinstance(raw, dict):
        c.bad(path, "must be an object")
        return None
    table = _table(cls)
    c.known(raw, path, [key for _, key, _ in table] + list(also))
    rec = cls(**{name: _value(c, spec, raw.get(key), _at(path, key)) for name, key, spec in table})
    checked = getattr(rec, "_checked", None)
    return checked(lambda sub, message: c.bad(_at(path, sub), message)) if checked else rec


def _value(c: _Checker, spec: _Field, value: Any, path: str) -> Any:
    if value is None:  # JSON null is a missing key
        if spec.required:
            c.bad(path, "is required")
        return spec.fallback
    if is_dataclass(spec.kind):
        return _read(c, spec.kind, value, path)
    want = list if spec.kind is tuple else spec.kind
    if spec.kind in (int, (int, float)) and isinstance(value, bool):
        c.bad(path, "must be an integer" if spec.kind is int else "must be a number")
        return spec.fallback
    if not isinstance(value, want):
        name = "number" if isinstance(want, tuple) else want.__name__
        c.bad(path, f"must be {name}, got {type(value).__name__}")
        return spec.fallback
    if spec.kind is tuple and spec.item is None:
        value = tuple(value)
    elif spec.kind is tuple:
        kept = []
        for j, x in enumerate(value):
            x = _item(c, spec, x, f"{path}[{j}]")
            if x is not None:
                c.where[id(x)] = f"{path}[{j}]"
                kept.append(x)
        value = tuple(kept)
    for check in spec.checks:
        value = check(c, value, path)
    return value


def _item(c: _Checker, spec: _Field, value: Any, path: str) -> Any:
    if is_dataclass(spec.item):
        rec = _read(c, spec.item, value, path)
        return astuple(rec) if spec.pairs and rec is not None else rec
    return spec.item(c, value, path)


def to_doc(desired: Desired) -> Dict[str, Any]:
    """The JSON-ready document of ``desired``, as the renderer writes it: ``parse_desired``
    gives ``desired`` back. Optional keys that are None, and ``underlay.deny`` and
    ``router.expose`` when empty, are left out."""
    doc = _write(desired)
    # the renderer's key order, so that a stored document keeps its bytes
    return {**{key: doc[key] for key in ("version", "app", "host")}, **doc}


def _write(rec: Any) -> Dict[str, Any]:
    doc: Dict[str, Any] = {}
    for name, key, spec in _table(type(rec)):
        value = getattr(rec, name)
        if value is None or (spec.sparse and not value):
            continue
        if is_dataclass(spec.kind):
            value = _write(value)
        elif is_dataclass(spec.item):
            value = [_write(spec.item(*x) if spec.pairs else x) for x in value]
        elif spec.kind is tuple:
            value = [list(x) if isinstance(x, tuple) else x for x in value]
        doc[key] = value
    return doc


def parse_desired(doc: Any) -> Desired:
    """Validate a desired-state document (a decoded JSON value) and return frozen values."""
    if not isinstance(doc, dict):
        raise DesiredError(["document: must be a JSON object"])
    c = _Checker()
    desired = _read(c, Desired, doc, "", also=("prefixes",))  # prefixes: for destroy
    _check_links(c, desired)
    if desired.router is not None:
        desired = replace(desired, router=_check_router(c, desired))
    if c.problems:
        raise DesiredError(c.problems)
    return desired


# -- checks across records ------------------------------------------------------------------

def _check_links(c: _Checker, d: Desired) -> None:
    """Each link name, VNI, network name, VM name and VM file once; taps on this document's
    bridges; tunnel ends in the underlay's family."""
    def claim(seen: Dict[Any, str], name: Any, path: str, owner: str = "") -> None:
        """The first `path` (or its `owner` record) to use `name` has it."""
        if name in seen:
            c.bad(path, f"{name!r} is already used by {seen[name]}")
        elif name:  # unset: reported already
            seen[name] = owner or path

    links: Dict[Any, str] = {}
    vnis: Dict[Any, str] = {}
    names: Dict[Any, str] = {}
    underlay = d.underlay
    if underlay:
        claim(links, underlay.device, "underlay.device")
    for n in d.networks:
        p = c.at(n)
        claim(links, n.bridge, f"{p}.bridge")
        claim(links, n.vxlan, f"{p}.vxlan")
        claim(vnis, n.vni, f"{p}.vni", p)
        claim(names, n.name, f"{p}.name", p)
    if d.networks and underlay is None:
        c.bad("underlay", "is required when networks are given (VXLAN needs a local address)")
    if underlay and underlay.address:
        family = ipaddress.ip_address(underlay.address).version
        for n in d.networks:
            for addr in list(n.peers) + [e.dst for e in n.fdb]:
                if addr and ipaddress.ip_address(addr).version != family:
                    c.bad(c.at(n), f"{addr} is not IPv{family} like the underlay address "
                                   f"{underlay.address}")
    bridges = {n.bridge for n in d.networks}
    for t in d.taps:
        if t.bridge and t.bridge not in bridges:
            c.bad(f"{c.at(t)}.bridge",
                  f"{t.bridge!r} is not the bridge of any network in this document")
        claim(links, t.name, f"{c.at(t)}.name")
    vm_names: Dict[Any, str] = {}
    files: Dict[Any, str] = {}
    for vm in d.vms:
        p = c.at(vm)
        claim(vm_names, vm.name, f"{p}.name", p)
        for path, key in [(vm.pidfile, f"{p}.pidfile"), (vm.qmp, f"{p}.qmp")] + [
                (disk.path, f"{c.at(disk)}.path") for disk in vm.disks]:
            claim(files, path, key)


def _check_router(c: _Checker, d: Desired) -> Router:
    """The router's references against this document: interfaces on its networks, routes between
    gateway interfaces, rules on routes, leases and exposed services inside the interfaces'
    subnets. Returns it with its routes as sorted pairs, each once."""
    r = d.router
    assert r is not None
    by_name = {n.name: n for n in d.networks}
    subnets: Dict[str, Any] = {}
    for i, ri in enumerate(r.interfaces):
        p = c.at(ri)
        net = by_name.get(ri.network)
        if ri.network and net is None:
            c.bad(f"{p}.network", f"{ri.network!r} is not a network of this document")
        if net is not None and (ri.bridge != net.bridge or ri.vxlan != net.vxlan):
            c.bad(p, f"bridge/vxlan {ri.bridge}/{ri.vxlan} are not network {ri.network!r}'s "
                     f"({net.bridge}/{net.vxlan})")
        if ri.address:
            subnet = ipaddress.ip_interface(ri.address).network
            if any(subnet.overlaps(o) for o in subnets.values()):
                c.bad(f"{p}.address", f"{subnet} overlaps another interface's subnet")
            subnets[ri.network] = subnet
        if ri.nat and d.underlay is None:
            c.bad(f"{p}.nat", "needs an underlay (NAT leaves through the underlay device)")
        if any(x.network == ri.network for x in r.interfaces[:i]):
            c.bad(f"{p}.network", f"{ri.network!r} has two interfaces")

    gated = {i.network for i in r.interfaces if i.gateway}
    routes = set()
    for pair in r.routes:
        missing = [x for x in pair if x not in gated]
        if missing:
            c.bad(c.at(pair), f"{', '.join(missing)} has no gateway interface here")
        else:
            routes.add((min(pair), max(pair)))
    for rule in r.allow:
        pair = (min(rule.src, rule.dst), max(rule.src, rule.dst))
        if rule.src and rule.dst and pair not in routes:
            c.bad(c.at(rule), f"{rule.src!r} and {rule.dst!r} are not routed to each other here")

    dhcp_nets = {i.network for i in r.interfaces if i.dhcp}
    macs: Dict[str, str] = {}
    for lease in r.leases:
        p = c.at(lease)
        if lease.network and lease.network not in dhcp_nets:
            c.bad(f"{p}.network", f"{lease.network!r} has no interface with dhcp here")
        if lease.mac in macs and _MAC.match(lease.mac):
            c.bad(f"{p}.mac", f"{lease.mac!r} already has {macs[lease.mac]}")
        macs.setdefault(lease.mac, p[len("router."):])
        subnet = subnets.get(lease.network)
        if lease.ip and subnet is not None and ipaddress.ip_address(lease.ip) not in subnet:
            c.bad(f"{p}.ip", f"{lease.ip} is outside {subnet}")
    if r.names and not r.domain:
        c.bad("router.domain", "is required when names are given")
    _check_expose(c, r, subnets, d.underlay)
    return replace(r, routes=tuple(sorted(routes)))


def _check_expose(c: _Checker, r: Router, subnets: Dict[str, Any],
                  underlay: Optional[Underlay]) -> None:
    """``router.expose``: each target inside one of this host's interfaces' subnets (so the
    host can reach it), each uplink port once and never one the host itself needs."""
    if r.expose and (underlay is None or ":" in underlay.address):
        c.bad("router.expose", "needs an IPv4 underlay (the exposed ports are on its address)")
    seen: Dict[Tuple[int, str], str] = {}
    for e in r.expose:
        p, key = c.at(e), (e.port, e.protocol)
        if key in RESERVED_PORTS:
            c.bad(f"{p}.port", f"{e.port}/{e.protocol} is the host's own (SSH or VXLAN)")
        elif key in seen:
            c.bad(f"{p}.port", f"{e.port}/{e.protocol} is already exposed by {seen[key]}")
        seen.setdefault(key, p)
        if e.to and not any(ipaddress.ip_address(e.to) in net for net in subnets.values()):
            c.bad(f"{p}.to", f"{e.to} is in no subnet of this host's interfaces")


def parse_target(doc: Any) -> Tuple[str, str, Tuple[str, ...], Optional[Desired]]:
    """For ``destroy``: accept {"app", "run_dir", "prefixes"?} or a full desired document.

    Returns (app, run_dir, prefixes, desired-or-None).
    """
    if not isinstance(doc, dict):
        raise DesiredError(["document: must be a JSON object"])
    if "version" in doc:
        desired = parse_desired(doc)
        return desired.app, desired.run_dir, _prefixes(doc), desired
    c = _Checker()
    target = _read(c, _Target, doc, "", also=("prefixes",))
    try:
        prefixes = _prefixes(doc)
    except DesiredError as exc:
        c.problems.extend(exc.problems)
        prefixes = ()
    if c.problems:
        raise DesiredError(c.problems)
    return target.app, target.run_dir, prefixes, None


def _prefixes(doc: Dict[str, Any]) -> Tuple[str, ...]:
    raw = doc.get("prefixes") or []
    if not isinstance(raw, list) or not all(isinstance(p, str) for p in raw):
        raise DesiredError(["prefixes: must be a list of strings"])
    bad = [p for p in raw if len(p) < 2 or not _IFNAME.match(p)]
    if bad:
        raise DesiredError([f"prefixes: {p!r} is too broad or not an interface-name prefix"
                            for p in bad])
    return tuple(raw)
