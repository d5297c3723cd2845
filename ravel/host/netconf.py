"""PURE: the text of this host's network services, from the desired document's ``router``.

- ``nft_ruleset``  one nftables transaction replacing the app's tables (``inet``, on every host
  with networks: the fence around the tunnels and the underlay, and with a router routing, NAT
  and the firewall; ``bridge``, with a router: what must not cross the tunnels)
- ``dnsmasq_argv`` the DHCP and DNS server's command line (all its configuration is on it,
  so /proc/<pid>/cmdline says exactly what a running one serves)
- ``wanted_sysctls``

How the pieces fit (docs/networking.md): every host carrying a network puts the network's
gateway address and MAC on its bridge (the same on every host) and routes its own guests'
traffic. So that each host answers only its own guests, the gateway's ARP and the DHCP
exchange stay off the tunnels; the host's own frames leave with a per-host source MAC, and
guests' ARP replies to the shared MAC are broadcast, so the host that asked hears them.
Where an allow list makes a routed direction one-way, br_netfilter lets conntrack see bridged
packets too: a flow routed on one host and answered through another is tracked on both, which
keeps the firewall stateful across hosts (see wanted_sysctls for why only then).
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
import re
from typing import Dict, List, Optional, Sequence, Tuple

from .desired import Desired, Router, RouterInterface

VXLAN_PORT = 4789
TABLE_FAMILIES = ("inet", "bridge")  # the app's nft tables, in the order they are written
DHCP_LEASE_TIME = "12h"
BR_NF_CALL_IPTABLES = "/proc/sys/net/bridge/bridge-nf-call-iptables"
IP_FORWARD = "/proc/sys/net/ipv4/ip_forward"


def table_name(app: str) -> str:
    # an nft identifier, unquoted (nft takes no quoted table names)
    return "ravel-" + re.sub(r"[^A-Za-z0-9_-]", "_", app)


def _q(name: str) -> str:
    return '"' + name.replace('"', "") + '"'


def _ports(ports: Sequence[Tuple[int, int]]) -> str:
    items = [str(lo) if lo == hi else f"{lo}-{hi}" for lo, hi in ports]
    return items[0] if len(items) == 1 else "{ " + ", ".join(items) + " }"


def _allow_rules(protocol: str, ports: Sequence[Tuple[int, int]]) -> List[str]:
    if protocol == "any":
        return ["accept"]
    if protocol == "icmp":
        return ["meta l4proto icmp accept"]
    if not ports:
        return [f"meta l4proto {protocol} accept"]
    return [f"meta l4proto {protocol} th dport {_ports(ports)} accept"]


def _chain(name: str, rules: Sequence[str], hook: str = "") -> List[str]:
    out = [f"\tchain {name} {{"]
    if hook:
        out.append(f"\t\t{hook}")
    out += [f"\t\t{r}" for r in rules]
    out.append("\t}")
    return out


def _peers(desired: Desired) -> List[str]:
    seen: List[str] = []
    for n in desired.networks:
        for p in n.peers:
            if p not in seen:
                seen.append(p)
    return seen


def wanted_tables(desired: Desired) -> Dict[str, List[str]]:
    """family -> the body of the app's table of that family this host needs.

    ``inet`` on every host that carries a network, router or not: the tunnels' fence (VXLAN
    only from this app's own hosts, only through the underlay device) and what guests reach on
    the host; with a router, also routing, the firewall and NAT (whose traffic never reaches
    the underlay's fenced addresses). ``bridge`` with a router only.
    """
    out: Dict[str, List[str]] = {}
    if desired.underlay is not None and (desired.networks or desired.router is not None):
        out["inet"] = _inet_table(desired, desired.router)
    if desired.router is not None:
        out["bridge"] = _bridge_table(desired, desired.router)
    return out


def nft_ruleset(desired: Desired) -> str:
    """One atomic ``nft -f`` transaction that leaves exactly the wanted tables: each wanted one
    replaced, any other of the app's families deleted.

    Each table carries ``comment "ravel <sha>"``, a hash of its own text, which is how facts
    tell a current ruleset from a stale one.
    """
    name = table_name(desired.app)
    wanted = wanted_tables(desired)
    out = []
    for family, body in wanted.items():
        # `table X {}` then `delete table X` makes the delete valid whether or not X exists
        out += [f"table {family} {name} {{}}", f"delete table {family} {name}"]
        out.append(f"table {family} {name} {{")
        out.append(f'\tcomment "ravel {ruleset_digest(body)}"')
        out += body
        out.append("}")
    for family in TABLE_FAMILIES:
        if family not in wanted:
            out += [f"table {family} {name} {{}}", f"delete table {family} {name}"]
    return "\n".join(out) + "\n"


def ruleset_digest(lines: Sequence[str]) -> str:
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()[:16]


def table_digests(desired: Desired) -> Dict[str, str]:
    """family -> the digest its table's comment must carry, for the tables this host needs."""
    return {family: ruleset_digest(body) for family, body in wanted_tables(desired).items()}


def fence(desired: Desired) -> List[str]:
    """What guests' forwarded traffic never reaches: the app's other hosts and the underlay's
    denied addresses (``underlay.deny``), as the fewest networks that cover them."""
    u = desired.underlay
    if u is None:
        return []
    nets = [ipaddress.ip_network(p) for p in _peers(desired)] + [ipaddress.ip_network(d) for d in u.deny]
    out = []
    for version in (4, 6):
        same = [n for n in nets if n.version == version]
        out += [str(n.network_address) if n.prefixlen == n.max_prefixlen else str(n)
                for n in ipaddress.collapse_addresses(same)]  # type: ignore[type-var]
    return out


def _set(name: str, addr_type: str, elements: Sequence[str], interval: bool = False) -> List[str]:
    lines = [f"\tset {name} {{", f"\t\ttype {addr_type}"]
    if interval:
        lines.append("\t\tflags interval")
    if elements:
        lines.append("\t\telements = { " + ", ".join(elements) + " }")
    lines.append("\t}")
    return lines


def _inet_table(desired: Desired, router: Optional[Router]) -> List[str]:
    uplink = desired.underlay.device if desired.underlay else ""
    v6 = bool(desired.underlay and ":" in desired.underlay.address)
    ipf, addr_type = ("ip6", "ipv6_addr") if v6 else ("ip", "ipv4_addr")
    by_net = {i.network: i for i in router.interfaces} if router else {}
    lines: List[str] = _set("peers", addr_type, _peers(desired))
    lines += _set("fence", addr_type, fence(desired), interval=True)

    # Tunnels come from this app's own hosts, through the underlay device: nobody else (a NAT'd
    # guest of another app, a guest handing its own host a packet with a peer's source address)
    # can put a frame onto this app's networks. Counted, so a drop can be seen.
    input_rules = []
    if uplink:
        input_rules.append(f"iifname != {_q(uplink)} udp dport {VXLAN_PORT} counter drop")
    input_rules.append(f"udp dport {VXLAN_PORT} {ipf} saddr != @peers counter drop")
    # traffic from guests to this host itself: only the services it offers them
    guest_chains: List[str] = []
    for net in desired.networks:
        ri = by_net.get(net.name)
        if ri is None:
            input_rules.append(f"iifname {_q(net.bridge)} drop")  # a pure layer-2 network
            continue
        chain = f"from_{net.name}"
        input_rules.append(f"iifname {_q(net.bridge)} jump {chain}")
        rules = ["ct state established,related accept", "icmp type echo-request accept"]
        if ri.dhcp:
            rules.append("udp dport 67 accept")
        if ri.dns:
            rules += ["udp dport 53 accept", "tcp dport 53 accept"]
        rules.append("drop")
        guest_chains += _chain(chain, rules)
    lines += _chain("input", input_rules, "type filter hook input priority filter; policy accept;")
    lines += guest_chains
    if router is None:
        return lines  # nothing is forwarded here: no chain that could drop bridged frames

    # first, before anything is accepted: nothing forwarded reaches a fenced address
    fwd = [f"oifname {_q(uplink)} {ipf} daddr @fence counter drop"] if uplink else []
    fwd.append("ct state established,related accept")
    # exposed services: only what this host DNATs from its uplink, to exactly that guest port
    pre, snat = _expose_rules(desired, router, uplink)
    fwd += [f"iifname {_q(uplink)} ip daddr {e.to} {e.protocol} dport {e.to_port} ct status dnat accept"
            for e in router.expose] if uplink else []
    # br_netfilter shows bridged packets here with iif = oif = the bridge: one network's own
    # traffic, always allowed
    fwd += [f"iifname {_q(n.bridge)} oifname {_q(n.bridge)} accept" for n in desired.networks]
    allow_chains: List[str] = []
    for a, b in router.routes:
        for src, dst in ((a, b), (b, a)):
            s, d = by_net[src], by_net[dst]
            rules = [r for rule in router.allow if rule.src == src and rule.dst == dst
                     for r in _allow_rules(rule.protocol, rule.ports)]
            if not any(rule.src == src and rule.dst == dst for rule in router.allow):
                fwd.append(f"iifname {_q(s.bridge)} oifname {_q(d.bridge)} accept")
                continue
            chain = f"allow_{src}_to_{dst}"
            fwd.append(f"iifname {_q(s.bridge)} oifname {_q(d.bridge)} jump {chain}")
            allow_chains += _chain(chain, rules)
    post: List[str] = list(snat)
    for ri in router.interfaces:
        if not ri.nat or not uplink:
            continue
        subnet = ipaddress.ip_interface(ri.address).network
        fwd.append(f"iifname {_q(ri.bridge)} oifname {_q(uplink)} ip saddr {subnet} accept")
        post.append(f"oifname {_q(uplink)} ip saddr {subnet} masquerade")
    lines += _chain("forward", fwd, "type filter hook forward priority filter; policy drop;")
    lines += allow_chains
    if pre:
        lines += _chain("prerouting", pre, "type nat hook prerouting priority dstnat; policy accept;")
    if post:
        lines += _chain("postrouting", post, "type nat hook postrouting priority srcnat; policy accept;")
    return lines


def _expose_rules(desired: Desired, router: Router, uplink: str) -> Tuple[List[str], List[str]]:
    """(prerouting DNAT, postrouting SNAT) for ``router.expose``. A port is taken only on the
    underlay address, only from the uplink. A guest on a network without a gateway has no route
    back to the outside client: its connection is SNAT'd to the host's address on that network,
    the one the guest can answer."""
    u = desired.underlay
    if not uplink or u is None or not router.expose:
        return [], []
    pre, snat = [], []
    for e in router.expose:
        pre.append(f"iifname {_q(uplink)} ip daddr {u.address} {e.protocol} dport {e.port} "
                   f"dnat ip to {e.to}:{e.to_port}")
        ri = next((i for i in router.interfaces
                   if ipaddress.ip_address(e.to) in ipaddress.ip_interface(i.address).network), None)
        if ri is not None and not ri.gateway:
            snat.append(f"ip daddr {e.to} {e.protocol} dport {e.to_port} ct status dnat "
                        f"snat ip to {ipaddress.ip_interface(ri.address).ip}")
    return pre, snat


def _bridge_table(desired: Desired, router: Router) -> List[str]:
    vxlans = [n.vxlan for n in desired.networks]
    pre: List[str] = []
    fwd: List[str] = []
    inp: List[str] = []
    out: List[str] = []
    for ri in router.interfaces:
        ip = str(ipaddress.ip_interface(ri.address).ip)
        vx = _q(ri.vxlan)
        # a guest's ARP reply to the shared gateway MAC may answer another host: all hear it
        not_tunnel = "{ " + ", ".join(_q(v) for v in vxlans) + " }"
        pre.append(f"iifname != {not_tunnel} ether daddr {ri.mac} arp operation reply "
                   "ether daddr set ff:ff:ff:ff:ff:ff")
        # each host answers for the gateway to its own guests only
        fwd.append(f"oifname {vx} arp operation request arp daddr ip {ip} drop")
        inp.append(f"iifname {vx} arp operation request arp daddr ip {ip} drop")
        out.append(f"oifname {vx} ether saddr {ri.mac} ether saddr set {ri.egress_mac}")
        if ri.dhcp:
            fwd.append(f"oifname {vx} ether type ip udp dport 67 drop")
            inp.append(f"iifname {vx} ether type ip udp dport 67 drop")
            out.append(f"oifname {vx} ether type ip udp sport 67 drop")
    lines: List[str] = []
    lines += _chain("prerouting", pre, "type filter hook prerouting priority filter; policy accept;")
    lines += _chain("forward", fwd, "type filter hook forward priority filter; policy accept;")
    lines += _chain("input", inp, "type filter hook input priority filter; policy accept;")
    lines += _chain("output", out, "type filter hook output priority filter; policy accept;")
    return lines


# -- dnsmasq ---------------------------------------------------------------------------------------

def dnsmasq_paths(run_dir: str) -> Dict[str, str]:
    return {"pidfile": os.path.join(run_dir, "dnsmasq.pid"),
            "leases": os.path.join(run_dir, "dnsmasq.leases"),
            "log": os.path.join(run_dir, "dnsmasq.log")}


def dnsmasq_argv(desired: Desired, binary: str = "dnsmasq") -> Optional[List[str]]:
    """DHCP (fixed leases for ravel's NICs only) and DNS (the app's VM names, nothing else) for
    this host's guests; None when no network here has either."""
    router = desired.router
    if router is None:
        return None
    served = [ri for ri in router.interfaces if ri.dhcp or ri.dns]
    if not served:
        return None
    paths = dnsmasq_paths(desired.run_dir)
    argv = [binary, "--conf-file=/dev/null", f"--pid-file={paths['pidfile']}",
            f"--dhcp-leasefile={paths['leases']}", f"--log-facility={paths['log']}",
            "--bind-dynamic", "--except-interface=lo"]
    argv += [f"--interface={ri.bridge}" for ri in served]
    if any(ri.dns for ri in served):
        # no upstream: every name outside the app is NXDOMAIN at once, never a timeout
        argv += ["--no-resolv", "--no-hosts", "--no-poll", "--local=/#/", "--localise-queries",
                 f"--domain={router.domain}"]
        for name, ip in router.names:
            argv.append(f"--host-record={name}.{router.domain},{name},{ip}")
    else:
        argv.append("--port=0")
    dhcp = [ri for ri in served if ri.dhcp]
    if dhcp:
        argv += ["--dhcp-authoritative", "--no-ping", "--dhcp-ignore=tag:!known"]
    for ri in dhcp:
        iface = ipaddress.ip_interface(ri.address)
        tag = ri.bridge
        argv.append(f"--dhcp-range=set:{tag},{iface.network.network_address},static,"
                    f"{iface.network.netmask},{DHCP_LEASE_TIME}")
        argv.append(f"--dhcp-option=tag:{tag},option:router,{iface.ip}" if ri.gateway
                    else f"--dhcp-option=tag:{tag},3")
        if ri.dns:
            argv += [f"--dhcp-option=tag:{tag},option:dns-server,{iface.ip}",
                     f"--dhcp-option=tag:{tag},option:domain-name,{router.domain}",
                     f"--dhcp-option=tag:{tag},option:domain-search,{router.domain}"]
        else:
            argv.append(f"--dhcp-option=tag:{tag},6")
        argv.append(f"--dhcp-option=tag:{tag},option:mtu,{ri.mtu}")
    nets = {ri.network for ri in dhcp}
    for lease in router.leases:
        if lease.network in nets:
            argv.append(f"--dhcp-host={lease.mac},{lease.ip},{lease.name}")
    return argv


def wanted_sysctls(desired: Desired) -> Dict[str, str]:
    """/proc/sys path -> value. Forwarding for the router; no IPv6 on bridges that carry the
    shared gateway MAC (every host would claim the same link-local address). br_netfilter (so
    conntrack sees bridged packets) only where an allow list makes some routed direction
    one-way: only then must a host know that a packet it routes is a reply to a flow another
    host routed. It costs every bridged packet a trip through conntrack (10-25 % of a
    network's throughput here), so with open routing it is off."""
    router = desired.router
    if router is None:
        return {}
    out = {IP_FORWARD: "1", BR_NF_CALL_IPTABLES: "1" if router.allow else "0"}
    for ri in router.interfaces:
        out[f"/proc/sys/net/ipv6/conf/{ri.bridge}/disable_ipv6"] = "1"
    return out


def interface_of(router: Router, bridge: str) -> Optional[RouterInterface]:
    return next((i for i in router.interfaces if i.bridge == bridge), None)
