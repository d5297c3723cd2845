"""The desired-state document (version 1): parsed into frozen values, every problem reported.

The document is produced by ravel's renderer; this module re-checks it on the host because a
bad document must fail before any side effect, with a message naming the key at fault.
"""

from __future__ import annotations

import ipaddress
import os
import re
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

from . import DESIRED_VERSION

VXLAN_PORT = 4789
ZERO_MAC = "00:00:00:00:00:00"
DISK_BASE_FORMATS = ("qcow2", "vmdk", "raw")

_IFNAME = re.compile(r"^[A-Za-z0-9_.:-]{1,15}$")
_VMNAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
_MAC = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")


class DesiredError(ValueError):
    """The desired document is invalid; ``problems`` lists every fault as 'path: message'."""

    def __init__(self, problems: List[str]) -> None:
        self.problems = list(problems)
        super().__init__("invalid desired state: " + "; ".join(self.problems))


@dataclass(frozen=True)
class Underlay:
    device: str
    address: str
    mtu: Optional[int] = None
    # underlay addresses (networks) that guests' forwarded traffic must never reach: other
    # hosts, this machine's own end of a local underlay... (docs/networking.md, "Fences")
    deny: Tuple[str, ...] = ()


@dataclass(frozen=True)
class FdbEntry:
    mac: str
    dst: str


@dataclass(frozen=True)
class Network:
    name: str
    vni: int
    bridge: str
    vxlan: str
    mtu: int = 1500
    peers: Tuple[str, ...] = ()
    fdb: Tuple[FdbEntry, ...] = ()


@dataclass(frozen=True)
class Tap:
    name: str
    bridge: str
    mtu: int = 1500


@dataclass(frozen=True)
class Disk:
    path: str
    base: Optional[str] = None
    base_format: Optional[str] = None
    size_mib: Optional[int] = None


@dataclass(frozen=True)
class VM:
    name: str
    running: bool
    argv: Tuple[str, ...]
    pidfile: str
    qmp: str
    disks: Tuple[Disk, ...] = ()
    # a saved memory state to resume from instead of booting, the first time only (resume.py)
    incoming: Optional[str] = None


@dataclass(frozen=True)
class RouterInterface:
    """The host's side of one network: an address (the same on every host) and the rest."""
    network: str
    bridge: str
    vxlan: str
    address: str  # "10.0.0.1/24"
    mac: str  # the anycast gateway MAC, the same on every host
    egress_mac: str  # this host's own source MAC on the tunnel
    gateway: bool = True  # guests route through `address`
    dhcp: bool = False
    dns: bool = False
    nat: bool = False
    mtu: int = 1500


@dataclass(frozen=True)
class Allow:
    src: str  # network names
    dst: str
    protocol: str  # tcp | udp | icmp | any
    ports: Tuple[Tuple[int, int], ...] = ()


@dataclass(frozen=True)
class Lease:
    network: str
    mac: str
    ip: str
    name: str


@dataclass(frozen=True)
class Expose:
    """An exposed service: `protocol`/`port` on the underlay address, DNAT'd to to:to_port."""
    vm: str
    protocol: str  # tcp | udp
    port: int
    to: str
    to_port: int


# the host's own uplink ports: an exposed port there would take SSH or the tunnels away
RESERVED_PORTS = ((22, "tcp"), (VXLAN_PORT, "udp"))


@dataclass(frozen=True)
class Router:
    domain: str
    interfaces: Tuple[RouterInterface, ...] = ()
    routes: Tuple[Tuple[str, str], ...] = ()  # network pairs routed to each other
    allow: Tuple[Allow, ...] = ()
    leases: Tuple[Lease, ...] = ()
    names: Tuple[Tuple[str, str], ...] = ()  # (name, ip)
    expose: Tuple[Expose, ...] = ()

    def interface(self, network: str) -> Optional[RouterInterface]:
        return next((i for i in self.interfaces if i.network == network), None)


@dataclass(frozen=True)
class Desired:
    app: str
    run_dir: str
    host: str = ""
    underlay: Optional[Underlay] = None
    networks: Tuple[Network, ...] = ()
    taps: Tuple[Tap, ...] = ()
    vms: Tuple[VM, ...] = ()
    version: int = DESIRED_VERSION
    router: Optional[Router] = None  # this host's piece of the app's network services

    def link_kinds(self) -> Dict[str, str]:
        """Every link this document wants, name -> kind ('bridge' | 'vxlan' | 'tap')."""
        kinds: Dict[str, str] = {}
        for net in self.networks:
            kinds[net.bridge] = "bridge"
            kinds[net.vxlan] = "vxlan"
        for tap in self.taps:
            kinds[tap.name] = "tap"
        return kinds


@dataclass
class _Checker:
    problems: List[str] = field(default_factory=list)

    def bad(self, path: str, message: str) -> None:
        self.problems.append(f"{path}: {message}")

    def get(self, obj: Dict[str, Any], key: str, path: str, kind: Any, required: bool = True,
            default: Any = None) -> Any:
        if key not in obj or obj[key] is None:
            if required:
                self.bad(f"{path}.{key}" if path else key, "is required")
            return default
        value = obj[key]
        if kind is int and isinstance(value, bool):
            self.bad(f"{path}.{key}" if path else key, "must be an integer")
            return default
        if not isinstance(value, kind):
            name = kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind)
            self.bad(f"{path}.{key}" if path else key,
                     f"must be {name}, got {type(value).__name__}")
            return default
        return value

    def known(self, obj: Dict[str, Any], path: str, keys: str) -> None:
        """Unknown keys are errors (a typo must not silently drop state); "_"-keys are free."""
        allowed = set(keys.split())
        for key in obj:
            if key not in allowed and not str(key).startswith("_"):
                where = f"{path}.{key}" if path else str(key)
                self.bad(where, f"unknown key (known: {', '.join(sorted(allowed))})")

    def ifname(self, value: Any, path: str) -> None:
        if isinstance(value, str) and not _IFNAME.match(value):
            self.bad(path, f"{value!r} is not a valid interface name (1-15 of A-Z a-z 0-9 _ . : -)")

    def ip(self, value: Any, path: str) -> Optional[str]:
        if not isinstance(value, str):
            return None
        try:
            return str(ipaddress.ip_address(value))
        except ValueError:
            self.bad(path, f"{value!r} is not an IP address")
            return None

    def mtu(self, value: Any, path: str) -> None:
        if isinstance(value, int) and not 68 <= value <= 65535:
            self.bad(path, f"{value} is outside 68..65535")

    def abspath(self, value: Any, path: str) -> None:
        if isinstance(value, str) and (not os.path.isabs(value) or "\0" in value):
            self.bad(path, f"{value!r} must be an absolute path")


def parse_desired(doc: Any) -> Desired:
    """Validate a desired-state document (a decoded JSON value) and return frozen values."""
    c = _Checker()
    if not isinstance(doc, dict):
        raise DesiredError(["document: must be a JSON object"])
    c.known(doc, "", "version app host run_dir underlay networks taps vms prefixes router")
    version = c.get(doc, "version", "", int)
    if version is not None and version != DESIRED_VERSION:
        c.bad("version", f"unsupported version {version}, this runtime speaks {DESIRED_VERSION}")
    app = c.get(doc, "app", "", str)
    if isinstance(app, str) and not _VMNAME.match(app):
        c.bad("app", f"{app!r} must be 1-64 of A-Z a-z 0-9 _ . -")
    host = c.get(doc, "host", "", str, required=False, default="")
    run_dir = c.get(doc, "run_dir", "", str)
    c.abspath(run_dir, "run_dir")
    if isinstance(run_dir, str) and os.path.normpath(run_dir) == "/":
        c.bad("run_dir", "must not be /")

    underlay = None
    raw_u = c.get(doc, "underlay", "", dict, required=False)
    if raw_u is not None:
        c.known(raw_u, "underlay", "device address mtu deny")
        dev = c.get(raw_u, "device", "underlay", str)
        c.ifname(dev, "underlay.device")
        addr = c.ip(c.get(raw_u, "address", "underlay", str), "underlay.address")
        umtu = c.get(raw_u, "mtu", "underlay", int, required=False)
        c.mtu(umtu, "underlay.mtu")
        deny: List[str] = []
        for j, net in enumerate(c.get(raw_u, "deny", "underlay", list, required=False, default=[])):
            q = f"underlay.deny[{j}]"
            try:
                parsed = ipaddress.ip_network(net) if isinstance(net, str) else None
            except ValueError:
                parsed = None
            if parsed is None:
                c.bad(q, f"{net!r} is not an address or network (198.18.0.0/16, 10.0.0.5)")
            elif addr and parsed.version != ipaddress.ip_address(addr).version:
                c.bad(q, f"{net} is not IPv{ipaddress.ip_address(addr).version} like the "
                         f"underlay address {addr}")
            elif str(parsed) not in deny:
                deny.append(str(parsed))
        underlay = Underlay(device=dev or "", address=addr or "", mtu=umtu, deny=tuple(deny))

    networks: List[Network] = []
    raw_nets = c.get(doc, "networks", "", list, required=False, default=[])
    for i, raw in enumerate(raw_nets):
        p = f"networks[{i}]"
        if not isinstance(raw, dict):
            c.bad(p, "must be an object")
            continue
        c.known(raw, p, "name vni bridge vxlan mtu peers fdb")
        name = c.get(raw, "name", p, str, default="")
        vni = c.get(raw, "vni", p, int, default=0)
        if isinstance(vni, int) and vni and not 1 <= vni <= 0xFFFFFF:
            c.bad(f"{p}.vni", f"{vni} is outside 1..16777215")
        bridge = c.get(raw, "bridge", p, str, default="")
        c.ifname(bridge, f"{p}.bridge")
        vxlan = c.get(raw, "vxlan", p, str, default="")
        c.ifname(vxlan, f"{p}.vxlan")
        mtu = c.get(raw, "mtu", p, int, required=False, default=1500)
        c.mtu(mtu, f"{p}.mtu")
        peers: List[str] = []
        for j, peer in enumerate(c.get(raw, "peers", p, list, required=False, default=[])):
            ip = c.ip(peer, f"{p}.peers[{j}]")
            if not isinstance(peer, str):
                c.bad(f"{p}.peers[{j}]", "must be a string")
            elif ip and ip not in peers:
                peers.append(ip)
        fdb: List[FdbEntry] = []
        for j, ent in enumerate(c.get(raw, "fdb", p, list, required=False, default=[])):
            q = f"{p}.fdb[{j}]"
            if not isinstance(ent, dict):
                c.bad(q, "must be an object")
                continue
            c.known(ent, q, "mac dst")
            mac = c.get(ent, "mac", q, str, default="")
            mac_n = mac.lower()
            if mac and not _MAC.match(mac_n):
                c.bad(f"{q}.mac", f"{mac!r} is not a MAC address")
            elif mac and (mac_n == ZERO_MAC or int(mac_n[:2], 16) & 1):
                c.bad(f"{q}.mac", f"{mac!r} must be a unicast MAC")
            dst = c.ip(c.get(ent, "dst", q, str), f"{q}.dst")
            if mac and dst:
                if any(e.mac == mac_n for e in fdb):
                    c.bad(f"{q}.mac", f"{mac!r} is listed twice")
                else:
                    fdb.append(FdbEntry(mac=mac_n, dst=dst))
        networks.append(Network(name=name, vni=vni, bridge=bridge, vxlan=vxlan, mtu=mtu,
                                peers=tuple(peers), fdb=tuple(fdb)))

    bridges = {n.bridge for n in networks}
    taps: List[Tap] = []
    for i, raw in enumerate(c.get(doc, "taps", "", list, required=False, default=[])):
        p = f"taps[{i}]"
        if not isinstance(raw, dict):
            c.bad(p, "must be an object")
            continue
        c.known(raw, p, "name bridge mtu")
        name = c.get(raw, "name", p, str, default="")
        c.ifname(name, f"{p}.name")
        bridge = c.get(raw, "bridge", p, str, default="")
        if bridge and bridge not in bridges:
            c.bad(f"{p}.bridge", f"{bridge!r} is not the bridge of any network in this document")
        mtu = c.get(raw, "mtu", p, int, required=False, default=1500)
        c.mtu(mtu, f"{p}.mtu")
        taps.append(Tap(name=name, bridge=bridge, mtu=mtu))

    vms: List[VM] = []
    for i, raw in enumerate(c.get(doc, "vms", "", list, required=False, default=[])):
        p = f"vms[{i}]"
        if not isinstance(raw, dict):
            c.bad(p, "must be an object")
            continue
        c.known(raw, p, "name running argv pidfile qmp disks incoming")
        name = c.get(raw, "name", p, str, default="")
        if name and not _VMNAME.match(name):
            c.bad(f"{p}.name", f"{name!r} must be 1-64 of A-Z a-z 0-9 _ . -")
        running = c.get(raw, "running", p, bool, required=False, default=True)
        argv = c.get(raw, "argv", p, list, default=[])
        if isinstance(argv, list):
            if not argv:
                c.bad(f"{p}.argv", "must not be empty")
            elif not all(isinstance(a, str) and "\0" not in a for a in argv):
                c.bad(f"{p}.argv", "must be a list of strings")
        pidfile = c.get(raw, "pidfile", p, str, default="")
        c.abspath(pidfile, f"{p}.pidfile")
        qmp = c.get(raw, "qmp", p, str, default="")
        c.abspath(qmp, f"{p}.qmp")
        if isinstance(argv, list) and argv and all(isinstance(a, str) for a in argv):
            if "-daemonize" not in argv:
                c.bad(f"{p}.argv", "must include -daemonize (the runtime waits for QEMU's init)")
            if pidfile and not any(pidfile in a for a in argv):
                c.bad(f"{p}.argv", f"must pass the pidfile {pidfile!r} (-pidfile ...)")
        disks: List[Disk] = []
        for j, d in enumerate(c.get(raw, "disks", p, list, required=False, default=[])):
            q = f"{p}.disks[{j}]"
            if not isinstance(d, dict):
                c.bad(q, "must be an object")
                continue
            c.known(d, q, "path base base_format size_mib")
            path = c.get(d, "path", q, str, default="")
            c.abspath(path, f"{q}.path")
            base = c.get(d, "base", q, str, required=False)
            c.abspath(base, f"{q}.base")
            fmt = c.get(d, "base_format", q, str, required=False)
            size = c.get(d, "size_mib", q, int, required=False)
            if base is None and size is None:
                c.bad(q, "needs either base (an overlay) or size_mib (a blank disk)")
            if base is not None and size is not None:
                c.bad(q, "has both base and size_mib; give one")
            if base is not None:
                fmt = fmt or "qcow2"
                if fmt not in DISK_BASE_FORMATS:
                    c.bad(f"{q}.base_format",
                          f"{fmt!r} is not one of {', '.join(DISK_BASE_FORMATS)}")
            if size is not None and size <= 0:
                c.bad(f"{q}.size_mib", "must be positive")
            disks.append(Disk(path=path, base=base, base_format=fmt if base else None,
                              size_mib=size))
        incoming = c.get(raw, "incoming", p, str, required=False)
        c.abspath(incoming, f"{p}.incoming")
        if isinstance(argv, list) and "-incoming" in argv:
            c.bad(f"{p}.argv", "must not include -incoming (give the state file as incoming)")
        vms.append(VM(name=name, running=bool(running), pidfile=pidfile, qmp=qmp,
                      argv=tuple(argv) if isinstance(argv, list) else (), disks=tuple(disks),
                      incoming=incoming))

    _check_unique(c, networks, taps, vms, underlay)
    router = None
    if doc.get("router") is not None:
        router = parse_router(c, doc["router"], networks, underlay)
    if c.problems:
        raise DesiredError(c.problems)
    return Desired(app=app, host=host, run_dir=os.path.normpath(run_dir), underlay=underlay,
                   networks=tuple(networks), taps=tuple(taps), vms=tuple(vms), router=router)


def _check_unique(c: _Checker, networks: List[Network], taps: List[Tap], vms: List[VM],
                  underlay: Optional[Underlay]) -> None:
    seen: Dict[str, str] = {}

    def claim(name: str, path: str) -> None:
        if not name:
            return
        if name in seen:
            c.bad(path, f"{name!r} is already used by {seen[name]}")
        else:
            seen[name] = path

    if underlay and underlay.device:
        claim(underlay.device, "underlay.device")
    vnis: Dict[int, int] = {}
    names: Dict[str, int] = {}
    for i, n in enumerate(networks):
        claim(n.bridge, f"networks[{i}].bridge")
        claim(n.vxlan, f"networks[{i}].vxlan")
        if n.vni in vnis:
            c.bad(f"networks[{i}].vni", f"{n.vni} is already used by networks[{vnis[n.vni]}]")
        vnis.setdefault(n.vni, i)
        if n.name in names:
            c.bad(f"networks[{i}].name", f"{n.name!r} is already used by networks[{names[n.name]}]")
        names.setdefault(n.name, i)
    if networks and underlay is None:
        c.bad("underlay", "is required when networks are given (VXLAN needs a local address)")
    if underlay and underlay.address:
        family = ipaddress.ip_address(underlay.address).version
        for i, n in enumerate(networks):
            for addr in list(n.peers) + [e.dst for e in n.fdb]:
                if ipaddress.ip_address(addr).version != family:
                    c.bad(f"networks[{i}]", f"{addr} is not IPv{family} like the underlay "
                                            f"address {underlay.address}")
    for i, t in enumerate(taps):
        claim(t.name, f"taps[{i}].name")
    vm_names: Dict[str, int] = {}
    paths: Dict[str, str] = {}
    for i, vm in enumerate(vms):
        if vm.name in vm_names:
            c.bad(f"vms[{i}].name", f"{vm.name!r} is already used by vms[{vm_names[vm.name]}]")
        vm_names.setdefault(vm.name, i)
        for key, path in [("pidfile", vm.pidfile), ("qmp", vm.qmp)] + [
                (f"disks[{j}].path", d.path) for j, d in enumerate(vm.disks)]:
            if path in paths:
                c.bad(f"vms[{i}].{key}", f"{path!r} is already used by {paths[path]}")
            elif path:
                paths[path] = f"vms[{i}].{key}"


_DOMAIN = re.compile(r"^[a-z0-9]([a-z0-9-]{0,62})(\.[a-z0-9]([a-z0-9-]{0,62}))*$")
_HOSTNAME = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9-]{0,62})$")
PROTOCOLS = ("tcp", "udp", "icmp", "any")


def parse_router(c: _Checker, raw: Any, networks: List[Network],
                 underlay: Optional[Underlay]) -> Optional[Router]:
    """The ``router`` section: every reference is checked against this document's networks."""
    if not isinstance(raw, dict):
        c.bad("router", "must be an object")
        return None
    c.known(raw, "router", "domain interfaces routes allow leases names expose")
    domain = c.get(raw, "domain", "router", str, default="")
    if domain and not _DOMAIN.match(domain):
        c.bad("router.domain", f"{domain!r} is not a DNS domain")
    by_name = {n.name: n for n in networks}
    interfaces: List[RouterInterface] = []
    subnets: Dict[str, Any] = {}
    for i, ri in enumerate(c.get(raw, "interfaces", "router", list, required=False, default=[])):
        p = f"router.interfaces[{i}]"
        if not isinstance(ri, dict):
            c.bad(p, "must be an object")
            continue
        c.known(ri, p, "network bridge vxlan address mac egress_mac gateway dhcp dns nat mtu")
        name = c.get(ri, "network", p, str, default="")
        net = by_name.get(name)
        if name and net is None:
            c.bad(f"{p}.network", f"{name!r} is not a network of this document")
        bridge = c.get(ri, "bridge", p, str, default="")
        vxlan = c.get(ri, "vxlan", p, str, default="")
        if net is not None and (bridge != net.bridge or vxlan != net.vxlan):
            c.bad(p, f"bridge/vxlan {bridge}/{vxlan} are not network {name!r}'s "
                     f"({net.bridge}/{net.vxlan})")
        address = c.get(ri, "address", p, str, default="")
        try:
            iface = ipaddress.ip_interface(address) if address else None
        except ValueError:
            c.bad(f"{p}.address", f"{address!r} is not an address with a prefix (10.0.0.1/24)")
            iface = None
        if iface is not None:
            if iface.version != 4 or iface.ip in (iface.network.network_address,
                                                   iface.network.broadcast_address):
                c.bad(f"{p}.address", f"{address!r} must be a usable IPv4 host address")
            elif any(iface.network.overlaps(o) for o in subnets.values()):
                c.bad(f"{p}.address", f"{iface.network} overlaps another interface's subnet")
            subnets[name] = iface.network
        macs = []
        for key in ("mac", "egress_mac"):
            mac = c.get(ri, key, p, str, default="").lower()
            if mac and (not _MAC.match(mac) or mac == ZERO_MAC or int(mac[:2], 16) & 1):
                c.bad(f"{p}.{key}", f"{mac!r} is not a unicast MAC address")
            macs.append(mac)
        flags = [c.get(ri, k, p, bool, required=False, default=d)
                 for k, d in (("gateway", True), ("dhcp", False), ("dns", False), ("nat", False))]
        mtu = c.get(ri, "mtu", p, int, required=False, default=1500)
        c.mtu(mtu, f"{p}.mtu")
        if flags[3] and not flags[0]:
            c.bad(f"{p}.nat", "needs gateway: true (guests send outside traffic to the gateway)")
        if flags[3] and underlay is None:
            c.bad(f"{p}.nat", "needs an underlay (NAT leaves through the underlay device)")
        if any(x.network == name for x in interfaces):
            c.bad(f"{p}.network", f"{name!r} has two interfaces")
        interfaces.append(RouterInterface(name, bridge, vxlan, address, macs[0], macs[1],
                                          *[bool(f) for f in flags], mtu=mtu))
    gated = {i.network for i in interfaces if i.gateway}

    routes: List[Tuple[str, str]] = []
    for i, pair in enumerate(c.get(raw, "routes", "router", list, required=False, default=[])):
        p = f"router.routes[{i}]"
        if (not isinstance(pair, list) or len(pair) != 2 or not all(isinstance(x, str) for x in pair)
                or pair[0] == pair[1]):
            c.bad(p, "must be a pair of two different network names")
            continue
        missing = [x for x in pair if x not in gated]
        if missing:
            c.bad(p, f"{', '.join(missing)} has no gateway interface here")
            continue
        routes.append((min(pair), max(pair)))

    allow: List[Allow] = []
    for i, rule in enumerate(c.get(raw, "allow", "router", list, required=False, default=[])):
        p = f"router.allow[{i}]"
        if not isinstance(rule, dict):
            c.bad(p, "must be an object")
            continue
        c.known(rule, p, "from to protocol ports")
        src = c.get(rule, "from", p, str, default="")
        dst = c.get(rule, "to", p, str, default="")
        proto = c.get(rule, "protocol", p, str, required=False, default="any")
        if proto not in PROTOCOLS:
            c.bad(f"{p}.protocol", f"{proto!r} is not one of {', '.join(PROTOCOLS)}")
        if src and dst and (min(src, dst), max(src, dst)) not in routes:
            c.bad(p, f"{src!r} and {dst!r} are not routed to each other here")
        ports: List[Tuple[int, int]] = []
        for j, rng in enumerate(c.get(rule, "ports", p, list, required=False, default=[])):
            if (not isinstance(rng, list) or len(rng) != 2
                    or not all(isinstance(x, int) and not isinstance(x, bool) for x in rng)
                    or not 1 <= rng[0] <= rng[1] <= 65535):
                c.bad(f"{p}.ports[{j}]", "must be [low, high] with 1 <= low <= high <= 65535")
            else:
                ports.append((rng[0], rng[1]))
        if ports and proto not in ("tcp", "udp"):
            c.bad(f"{p}.ports", f"ports need protocol tcp or udp, not {proto}")
        allow.append(Allow(src, dst, proto, tuple(ports)))

    leases: List[Lease] = []
    dhcp_nets = {i.network for i in interfaces if i.dhcp}
    seen_macs: Dict[str, int] = {}
    for i, raw_l in enumerate(c.get(raw, "leases", "router", list, required=False, default=[])):
        p = f"router.leases[{i}]"
        if not isinstance(raw_l, dict):
            c.bad(p, "must be an object")
            continue
        c.known(raw_l, p, "network mac ip name")
        net_name = c.get(raw_l, "network", p, str, default="")
        if net_name and net_name not in dhcp_nets:
            c.bad(f"{p}.network", f"{net_name!r} has no interface with dhcp here")
        mac = c.get(raw_l, "mac", p, str, default="").lower()
        if mac and not _MAC.match(mac):
            c.bad(f"{p}.mac", f"{mac!r} is not a MAC address")
        elif mac in seen_macs:
            c.bad(f"{p}.mac", f"{mac!r} already has leases[{seen_macs[mac]}]")
        seen_macs.setdefault(mac, i)
        ip = c.ip(c.get(raw_l, "ip", p, str), f"{p}.ip")
        if ip and net_name in subnets and ipaddress.ip_address(ip) not in subnets[net_name]:
            c.bad(f"{p}.ip", f"{ip} is outside {subnets[net_name]}")
        name = c.get(raw_l, "name", p, str, default="")
        if name and not _HOSTNAME.match(name):
            c.bad(f"{p}.name", f"{name!r} is not a host name")
        leases.append(Lease(net_name, mac, ip or "", name))

    names: List[Tuple[str, str]] = []
    for i, rec in enumerate(c.get(raw, "names", "router", list, required=False, default=[])):
        p = f"router.names[{i}]"
        if not isinstance(rec, dict):
            c.bad(p, "must be an object")
            continue
        c.known(rec, p, "name ip")
        name = c.get(rec, "name", p, str, default="")
        if name and not _HOSTNAME.match(name):
            c.bad(f"{p}.name", f"{name!r} is not a host name")
        ip = c.ip(c.get(rec, "ip", p, str), f"{p}.ip")
        if name and ip:
            names.append((name, ip))
    if names and not domain:
        c.bad("router.domain", "is required when names are given")
    expose = _parse_expose(c, raw, subnets, underlay)
    return Router(domain=domain, interfaces=tuple(interfaces), routes=tuple(sorted(set(routes))),
                  allow=tuple(allow), leases=tuple(leases), names=tuple(names), expose=expose)


def _port(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= 65535


def _parse_expose(c: _Checker, raw: Dict[str, Any], subnets: Dict[str, Any],
                  underlay: Optional[Underlay]) -> Tuple[Expose, ...]:
    """``router.expose``: each target inside one of this host's interfaces' subnets (so the
    host can reach it), each uplink port once and never one the host itself needs."""
    out: List[Expose] = []
    seen: Dict[Tuple[int, str], int] = {}
    items = c.get(raw, "expose", "router", list, required=False, default=[])
    if items and (underlay is None or ":" in underlay.address):
        c.bad("router.expose", "needs an IPv4 underlay (the exposed ports are on its address)")
    for i, e in enumerate(items):
        p = f"router.expose[{i}]"
        if not isinstance(e, dict):
            c.bad(p, "must be an object")
            continue
        c.known(e, p, "vm protocol port to to_port")
        vm = c.get(e, "vm", p, str, default="")
        if vm and not _VMNAME.match(vm):
            c.bad(f"{p}.vm", f"{vm!r} must be 1-64 of A-Z a-z 0-9 _ . -")
        proto = c.get(e, "protocol", p, str, default="")
        if proto and proto not in ("tcp", "udp"):
            c.bad(f"{p}.protocol", f"{proto!r} is not tcp or udp")
        port = c.get(e, "port", p, int, default=0)
        to_port = c.get(e, "to_port", p, int, default=0)
        for key, value in (("port", port), ("to_port", to_port)):
            if value and not _port(value):
                c.bad(f"{p}.{key}", f"{value} is outside 1..65535")
        if (port, proto) in RESERVED_PORTS:
            c.bad(f"{p}.port", f"{port}/{proto} is the host's own (SSH or VXLAN)")
        elif (port, proto) in seen:
            c.bad(f"{p}.port", f"{port}/{proto} is already exposed by router.expose[{seen[(port, proto)]}]")
        seen.setdefault((port, proto), i)
        to = c.ip(c.get(e, "to", p, str), f"{p}.to")
        if to and not any(ipaddress.ip_address(to) in net for net in subnets.values()):
            c.bad(f"{p}.to", f"{to} is in no subnet of this host's interfaces")
        out.append(Expose(vm, proto, port, to or "", to_port))
    return tuple(out)


def parse_target(doc: Any) -> Tuple[str, str, Tuple[str, ...], Optional[Desired]]:
    """For ``destroy``: accept {"app", "run_dir", "prefixes"?} or a full desired document.

    Returns (app, run_dir, prefixes, desired-or-None).
    """
    if not isinstance(doc, dict):
        raise DesiredError(["document: must be a JSON object"])
    if "version" in doc:
        desired = parse_desired(doc)
        prefixes = _prefixes(doc)
        return desired.app, desired.run_dir, prefixes, desired
    c = _Checker()
    c.known(doc, "", "app run_dir prefixes")
    app = c.get(doc, "app", "", str)
    run_dir = c.get(doc, "run_dir", "", str)
    c.abspath(run_dir, "run_dir")
    if isinstance(run_dir, str) and os.path.normpath(run_dir) == "/":
        c.bad("run_dir", "must not be /")
    try:
        prefixes = _prefixes(doc)
    except DesiredError as exc:
        c.problems.extend(exc.problems)
        prefixes = ()
    if c.problems:
        raise DesiredError(c.problems)
    return app, os.path.normpath(run_dir), prefixes, None


def _prefixes(doc: Dict[str, Any]) -> Tuple[str, ...]:
    raw = doc.get("prefixes") or []
    if not isinstance(raw, list) or not all(isinstance(p, str) for p in raw):
        raise DesiredError(["prefixes: must be a list of strings"])
    bad = [p for p in raw if len(p) < 2 or not _IFNAME.match(p)]
    if bad:
        raise DesiredError([f"prefixes: {p!r} is too broad or not an interface-name prefix"
                            for p in bad])
    return tuple(raw)
