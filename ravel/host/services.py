"""Network services on this host: the gateway address on each bridge, sysctls, the app's nft
tables and its dnsmasq (DHCP + DNS). The text of each comes from ``netconf`` (pure).

Same shape as the rest of the runtime: ``gather_router`` observes, ``router_actions`` and
``router_teardown`` are PURE (facts -> the minimal actions, each with a reason), ``execute``
performs one action.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import shutil
import signal
import time
from dataclasses import dataclass, field
from typing import Any, Collection, Dict, List, Optional, Tuple

from . import proc
from .desired import Desired
from .netconf import (
    BR_NF_CALL_IPTABLES, TABLE_FAMILIES, dnsmasq_argv, dnsmasq_paths, nft_ruleset, table_digests,
    table_name, wanted_sysctls,
)

FAMILIES = TABLE_FAMILIES
DNSMASQ_START_TIMEOUT = 10.0
STOP_WAIT = 3.0
_COMMENT = re.compile(r'comment "ravel ([0-9a-f]+)"')

# Every kind of action here; they share one phase, between taps and disks, in this order.
KINDS = ("router.sysctl", "router.address", "router.nft", "router.nft.delete",
         "router.dnsmasq.stop", "router.dnsmasq.start")


@dataclass(frozen=True)
class BridgeFact:
    mac: str
    addresses: Tuple[str, ...] = ()  # IPv4, "10.0.0.1/24"


@dataclass(frozen=True)
class DnsmasqFact:
    pid: Optional[int] = None  # from the pidfile
    running: bool = False  # pid alive and it is a dnsmasq using our pidfile
    argv: Tuple[str, ...] = ()  # its command line, when running
    starttime: Optional[int] = None


@dataclass(frozen=True)
class RouterFacts:
    app: str = ""  # whose tables were looked for
    tools: Dict[str, bool] = field(default_factory=dict)  # "nft", "dnsmasq" -> installed?
    bridges: Dict[str, BridgeFact] = field(default_factory=dict)
    sysctls: Dict[str, Optional[str]] = field(default_factory=dict)  # path -> value, None: absent
    tables: Dict[str, str] = field(default_factory=dict)  # family -> digest in its comment
    dnsmasq: DnsmasqFact = DnsmasqFact()


@dataclass(frozen=True)
class Step:
    """One action, in the same shape as ``reconcile.Action`` (which wraps it)."""

    kind: str
    target: str
    reason: str
    argv: Tuple[Tuple[str, ...], ...] = ()
    params: Dict[str, Any] = field(default_factory=dict)


# -- pure parsers ---------------------------------------------------------------------------

def parse_bridge_addresses(text: str, names: Collection[str]) -> Dict[str, BridgeFact]:
    """``ip -j addr show`` -> {bridge: BridgeFact} for the named devices that exist."""
    out: Dict[str, BridgeFact] = {}
    for item in json.loads(text or "[]"):
        name = item.get("ifname")
        if name not in names:
            continue
        addrs = tuple(f"{a['local']}/{a['prefixlen']}" for a in item.get("addr_info") or ()
                      if a.get("family") == "inet" and a.get("local") is not None)
        out[name] = BridgeFact(mac=str(item.get("address", "")).lower(), addresses=addrs)
    return out


def parse_table_comment(text: str) -> str:
    m = _COMMENT.search(text)
    return m.group(1) if m else ""


# -- observing -----------------------------------------------------------------------------------

def _read(path: str) -> Optional[str]:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


def _dnsmasq_fact(pidfile: str) -> DnsmasqFact:
    pid = proc.read_pidfile(pidfile)
    if not pid:
        return DnsmasqFact()
    st = proc.stat(pid)
    cmd = proc.cmdline(pid)
    if st is None or st[0] in ("Z", "X") or not cmd or os.path.basename(cmd[0]) != "dnsmasq" \
            or f"--pid-file={pidfile}" not in cmd:
        return DnsmasqFact(pid=pid)  # a stale pidfile: that pid is not our dnsmasq
    return DnsmasqFact(pid=pid, running=True, argv=tuple(cmd), starttime=st[1])


def gather_router(desired: Desired) -> RouterFacts:
    tools = {t: shutil.which(t) is not None for t in ("nft", "dnsmasq")}
    tables: Dict[str, str] = {}
    if tools["nft"]:
        for family in FAMILIES:
            r = proc.run(["nft", "list", "table", family, table_name(desired.app)], check=False)
            if r.rc == 0:
                tables[family] = parse_table_comment(r.stdout)
    bridges: Dict[str, BridgeFact] = {}
    if desired.networks:  # also without a router: addresses left from an earlier one go
        names = {n.bridge for n in desired.networks}
        bridges = parse_bridge_addresses(proc.run(["ip", "-j", "addr", "show"]).stdout, names)
    sysctls = {path: _read(path) for path in wanted_sysctls(desired)}
    return RouterFacts(app=desired.app, tools=tools, bridges=bridges, sysctls=sysctls, tables=tables,
                       dnsmasq=_dnsmasq_fact(dnsmasq_paths(desired.run_dir)["pidfile"]))


# -- pure planning ---------------------------------------------------------------------------------

def router_problems(desired: Desired, facts: Optional[RouterFacts]) -> List[str]:
    if facts is None:
        return []
    found = []
    if table_digests(desired) and not facts.tools.get("nft"):
        found.append("nft is not installed on this host (apt-get install nftables); the fence "
                     "around the app's tunnels" + (" and its routing, NAT and firewall"
                                                   if desired.router else "") + " need it")
    if dnsmasq_argv(desired) is not None and not facts.tools.get("dnsmasq"):
        found.append("dnsmasq is not installed on this host (apt-get install dnsmasq-base); "
                     "the app's DHCP and DNS need it")
    return found


def router_actions(desired: Desired, facts: Optional[RouterFacts],
                   fresh_bridges: Collection[str] = ()) -> List[Step]:
    """What takes this host's network services to ``desired.router``; [] when converged.
    ``fresh_bridges`` are (re)created by the same plan, so whatever was observed on them is gone."""
    facts = facts or RouterFacts()
    steps: List[Step] = []
    router = desired.router
    for path, value in wanted_sysctls(desired).items():
        bridge_path = "/conf/" in path
        seen = None if (bridge_path and path.split("/")[-2] in fresh_bridges) else facts.sysctls.get(path)
        if path == BR_NF_CALL_IPTABLES and value == "0" and seen is None:
            continue  # br_netfilter is not loaded: nothing to turn off
        if seen != value:
            steps.append(Step("router.sysctl", path, f"is {seen if seen is not None else 'unset'}, want {value}",
                              params={"path": path, "value": value,
                                      "modprobe": "br_netfilter" if path == BR_NF_CALL_IPTABLES and value == "1" else ""}))

    wanted = {ri.bridge: ri for ri in router.interfaces} if router else {}
    for net in desired.networks:
        fact = None if net.bridge in fresh_bridges else facts.bridges.get(net.bridge)
        have = fact.addresses if fact else ()
        ri = wanted.get(net.bridge)
        cmds: List[Tuple[str, ...]] = []
        why: List[str] = []
        if ri is not None:
            if fact is None or fact.mac != ri.mac:
                cmds.append(("ip", "link", "set", "dev", net.bridge, "address", ri.mac))
                why.append(f"gateway MAC {ri.mac} not set")
            if _norm(ri.address) not in {_norm(a) for a in have}:
                cmds.append(("ip", "addr", "add", ri.address, "dev", net.bridge))
                why.append(f"address {ri.address} missing")
        for addr in have:
            if ri is None or _norm(addr) != _norm(ri.address):
                cmds.append(("ip", "addr", "del", addr, "dev", net.bridge))
                why.append(f"address {addr} no longer desired")
        if cmds:
            steps.append(Step("router.address", net.bridge, "; ".join(why), tuple(cmds)))

    digests = table_digests(desired)
    if digests:
        # one transaction replaces what is stale and drops a family no longer wanted
        stale = [f for f in FAMILIES if facts.tables.get(f) != digests.get(f)]
        if stale:
            why = "; ".join(f"{f} table " + ("no longer desired" if f not in digests
                                             else "missing" if f not in facts.tables else "out of date")
                            for f in stale)
            steps.append(Step("router.nft", table_name(desired.app), why,
                              params={"ruleset": nft_ruleset(desired)}))
    elif facts.tables:
        steps.append(_nft_delete(desired.app, facts, "no networks on this host"))

    argv = dnsmasq_argv(desired)
    d = facts.dnsmasq
    pidfile = dnsmasq_paths(desired.run_dir)["pidfile"]
    if d.running and (argv is None or list(d.argv) != argv):
        steps.append(_dnsmasq_stop(d, pidfile, "no DHCP or DNS desired" if argv is None
                                   else "configuration changed"))
    if argv is not None and not (d.running and list(d.argv) == argv):
        steps.append(Step("router.dnsmasq.start", "dnsmasq",
                          "configuration changed" if d.running else "not running",
                          params={"argv": argv, "pidfile": pidfile}))
    return steps


def router_teardown(run_dir: str, facts: Optional[RouterFacts]) -> List[Step]:
    if facts is None:
        return []
    steps = []
    if facts.dnsmasq.running:
        steps.append(_dnsmasq_stop(facts.dnsmasq, dnsmasq_paths(run_dir)["pidfile"], "app destroyed"))
    if facts.tables:
        steps.append(_nft_delete(facts.app, facts, "app destroyed"))
    return steps


def _norm(addr: str) -> str:
    return str(ipaddress.ip_interface(addr))


def _nft_delete(app: str, facts: RouterFacts, reason: str) -> Step:
    name = table_name(app)
    return Step("router.nft.delete", name, reason,
                tuple(("nft", "delete", "table", f, name) for f in FAMILIES if f in facts.tables))


def _dnsmasq_stop(d: DnsmasqFact, pidfile: str, reason: str) -> Step:
    return Step("router.dnsmasq.stop", "dnsmasq", reason,
                params={"pid": d.pid, "argv": list(d.argv), "starttime": d.starttime,
                        "pidfile": pidfile})


# -- effects -------------------------------------------------------------------------------------

def execute(kind: str, argv: Tuple[Tuple[str, ...], ...], p: Dict[str, Any]) -> str:
    """Perform one router action; raises proc.CommandFailed or OSError on failure."""
    if kind == "router.sysctl":
        if not os.path.exists(p["path"]) and p.get("modprobe"):
            proc.run(["modprobe", p["modprobe"]], check=False)
        with open(p["path"], "w") as f:
            f.write(p["value"])
        return ""
    if kind == "router.nft":
        proc.run(["nft", "-f", "-"], input=p["ruleset"])
        return ""
    if kind == "router.nft.delete":
        for cmd in argv:
            r = proc.run(cmd, check=False)
            if r.rc != 0 and "No such file" not in r.stderr:
                raise proc.CommandFailed(cmd, f"`{' '.join(cmd)}` failed: {r.stderr.strip()}",
                                         rc=r.rc, stderr=r.stderr)
        return ""
    if kind == "router.address":
        for cmd in argv:
            proc.run(cmd)
        return ""
    if kind == "router.dnsmasq.stop":
        return stop(p.get("pid"), p.get("argv") or (), p.get("starttime"), p["pidfile"])
    if kind == "router.dnsmasq.start":
        return _start_dnsmasq(p["argv"], p["pidfile"])
    raise proc.CommandFailed([kind], f"unknown action kind {kind!r}")


def stop(pid: Optional[int], argv: Any, starttime: Optional[int], pidfile: str) -> str:
    """End a daemon we started: SIGTERM, bounded wait, SIGKILL; only while /proc still says it
    is the process we saw (same command line, same start time)."""
    detail = "not running"
    if pid:
        for sig, wait in ((signal.SIGTERM, STOP_WAIT), (signal.SIGKILL, STOP_WAIT)):
            st = proc.stat(pid)
            if st is None or st[0] in ("Z", "X") or (starttime and st[1] != starttime) \
                    or tuple(proc.cmdline(pid) or ()) != tuple(argv):
                break
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                break
            if proc.wait_gone(pid, wait, starttime):
                detail = f"stopped pid {pid} by {signal.Signals(sig).name}"
                break
        else:
            raise proc.CommandFailed(list(argv), f"pid {pid} survived SIGKILL")
    proc.unlink_quiet(pidfile)
    return detail


def _start_dnsmasq(argv: List[str], pidfile: str) -> str:
    proc.unlink_quiet(pidfile)
    # dnsmasq forks; its first process exits once the daemon has bound its sockets
    proc.run(argv, timeout=DNSMASQ_START_TIMEOUT)
    deadline = time.monotonic() + 2.0
    while True:
        fact = _dnsmasq_fact(pidfile)
        if fact.running:
            if list(fact.argv) != list(argv):
                raise proc.CommandFailed(argv, f"pid {fact.pid} in {pidfile} is not the dnsmasq started")
            return f"pid {fact.pid}"
        if time.monotonic() >= deadline:
            raise proc.CommandFailed(argv, f"dnsmasq exited 0 but no live process is in {pidfile}")
        time.sleep(0.05)
