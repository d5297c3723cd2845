"""Observing a host: links (``ip -j -d link show``), VXLAN FDB (``bridge -j fdb show``), VM
processes (pidfile + /proc/<pid>/cmdline), disks, and the app's own state files in run_dir.

The parsers (``parse_links``, ``parse_fdb``) are pure; ``gather`` runs the commands.

Files the runtime keeps in run_dir:

- ``owned.json``   {"version": 1, "app", "links": {name: kind}, "vms": {name: {pidfile, qmp,
                   disks}}}: the only source for "which devices/VMs are ours"
- ``<vm>.argv``    {"sha256", "argv", "pidfile", "qmp", "resume"?, "incoming"?}: the argv the VM
                   was last started with (and how far a resume from memory got: resume.py)
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import os
import platform
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from typing import Any, Dict, FrozenSet, Optional, Sequence, Tuple

from . import kvm, proc, supervise
from .desired import Desired, ZERO_MAC
from .ksm import KsmFacts
from .ksm import gather as gather_ksm
from .netem import NetemFacts
from .netem import gather as gather_netem
from .services import RouterFacts, gather_router

OWNED_FILE = "owned.json"
ARGV_SUFFIX = ".argv"


@dataclass(frozen=True)
class Link:
    name: str
    kind: str  # bridge | vxlan | tap | tun | veth | ... | "" (no linkinfo: a physical device)
    mtu: int
    up: bool
    master: Optional[str] = None
    vni: Optional[int] = None
    local: Optional[str] = None
    port: Optional[int] = None
    learning: Optional[bool] = None
    remote: Optional[str] = None  # vxlan group/remote, if any
    lower: Optional[str] = None  # vxlan "dev", if any
    mcast_snooping: Optional[int] = None


@dataclass(frozen=True)
class VMRecord:
    """run_dir/<vm>.argv: what the VM was last started with."""
    sha256: str
    argv: Tuple[str, ...]
    pidfile: str = ""
    qmp: str = ""
    resume: str = ""  # "" (booted), or a resume from a memory state: pending | loaded | done
    incoming: str = ""  # that state file


@dataclass(frozen=True)
class OwnedVM:
    pidfile: str
    qmp: str
    disks: Tuple[str, ...] = ()


@dataclass(frozen=True)
class Owned:
    links: Dict[str, str] = field(default_factory=dict)
    vms: Dict[str, OwnedVM] = field(default_factory=dict)


@dataclass(frozen=True)
class VMFact:
    name: str
    pidfile: str
    qmp: str
    pid: Optional[int] = None  # from the pidfile
    running: bool = False  # pid alive AND its cmdline is this VM's argv
    starttime: Optional[int] = None
    record: Optional[VMRecord] = None
    argv: Tuple[str, ...] = ()  # the identity checked against /proc: record argv, else desired
    note: str = ""  # why a pidfile's pid does not count
    files: Tuple[str, ...] = ()  # this VM's files that exist (pidfile, qmp, record, owned disks)
    ended: Optional[Dict[str, Any]] = None  # not running: how its last QEMU ended (supervise.py)


@dataclass(frozen=True)
class Facts:
    run_dir: str
    run_dir_exists: bool = False
    run_dir_mode: Optional[int] = None
    links: Dict[str, Link] = field(default_factory=dict)
    fdb: Dict[str, FrozenSet[Tuple[str, str]]] = field(default_factory=dict)
    owned: Owned = field(default_factory=Owned)
    vms: Dict[str, VMFact] = field(default_factory=dict)
    paths: Dict[str, bool] = field(default_factory=dict)  # disk and base paths -> exist?
    underlay_addresses: Optional[Tuple[str, ...]] = None  # None: not observed
    router: Optional[RouterFacts] = None  # network services (services.py); None: not observed
    ksm: Optional[KsmFacts] = None  # None: not observed
    netem: Optional[NetemFacts] = None  # taps' qdiscs and pulled cables (netem.py); None: not observed

    def exists(self, path: str) -> bool:
        return self.paths.get(path, False)


def argv_sha256(argv: Sequence[str]) -> str:
    return hashlib.sha256(json.dumps(list(argv), separators=(",", ":")).encode()).hexdigest()


# -- pure parsers ------------------------------------------------------------------------------

def parse_links(text: str) -> Dict[str, Link]:
    """``ip -j -d link show`` output -> {name: Link}."""
    links: Dict[str, Link] = {}
    for item in json.loads(text or "[]"):
        name = item.get("ifname")
        if not name:
            continue
        info = item.get("linkinfo") or {}
        kind = info.get("info_kind") or ""
        data = info.get("info_data") or {}
        if kind == "tun":
            kind = "tap" if data.get("type") == "tap" else "tun"
        link = Link(
            name=name, kind=kind, mtu=int(item.get("mtu", 0)),
            up="UP" in (item.get("flags") or []), master=item.get("master"),
        )
        if kind == "vxlan":
            link = Link(
                name=name, kind=kind, mtu=link.mtu, up=link.up, master=link.master,
                vni=data.get("id"), local=_norm_ip(data.get("local") or data.get("local6")),
                port=data.get("port"), learning=data.get("learning"),
                remote=_norm_ip(data.get("group") or data.get("group6") or data.get("remote")
                                or data.get("remote6")),
                lower=data.get("link"),
            )
        elif kind == "bridge":
            link = Link(name=name, kind=kind, mtu=link.mtu, up=link.up, master=link.master,
                        mcast_snooping=data.get("mcast_snooping"))
        links[name] = link
    return links


def parse_fdb(text: str) -> FrozenSet[Tuple[str, str]]:
    """``bridge -j fdb show dev VX`` output -> {(mac, dst)} of the VXLAN device's own entries."""
    entries = set()
    for item in json.loads(text or "[]"):
        dst = item.get("dst")
        if not dst or "self" not in (item.get("flags") or []):
            continue
        mac = str(item.get("mac", "")).lower()
        if mac:
            entries.add((mac, _norm_ip(dst) or dst))
    return frozenset(entries)


def _norm_ip(value: Any) -> Optional[str]:
    if not value:
        return None
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        return str(value)


def parse_owned(text: str) -> Owned:
    try:
        doc = json.loads(text)
    except ValueError:
        return Owned()
    if not isinstance(doc, dict):
        return Owned()
    links = {str(k): str(v) for k, v in (doc.get("links") or {}).items()}
    vms = {}
    for name, v in (doc.get("vms") or {}).items():
        if isinstance(v, dict):
            vms[str(name)] = OwnedVM(pidfile=str(v.get("pidfile", "")), qmp=str(v.get("qmp", "")),
                                     disks=tuple(str(d) for d in v.get("disks") or ()))
    return Owned(links=links, vms=vms)


def owned_document(app: str, owned: Owned) -> Dict[str, Any]:
    return {
        "version": 1, "app": app,
        "links": dict(sorted(owned.links.items())),
        "vms": {name: {"pidfile": v.pidfile, "qmp": v.qmp, "disks": list(v.disks)}
                for name, v in sorted(owned.vms.items())},
    }


def parse_record(text: str) -> Optional[VMRecord]:
    try:
        doc = json.loads(text)
        argv = tuple(str(a) for a in doc["argv"])
        return VMRecord(sha256=str(doc["sha256"]), argv=argv, pidfile=str(doc.get("pidfile", "")),
                        qmp=str(doc.get("qmp", "")), resume=str(doc.get("resume") or ""),
                        incoming=str(doc.get("incoming") or ""))
    except (ValueError, KeyError, TypeError):
        return None


# -- gathering -----------------------------------------------------------------------------------

def read_links() -> Dict[str, Link]:
    return parse_links(proc.run(["ip", "-j", "-d", "link", "show"]).stdout)


def read_fdb(device: str) -> FrozenSet[Tuple[str, str]]:
    return parse_fdb(proc.run(["bridge", "-j", "fdb", "show", "dev", device]).stdout)


def parse_addresses(text: str) -> Tuple[str, ...]:
    """``ip -j addr show dev X`` output -> the device's addresses."""
    found = []
    for item in json.loads(text or "[]"):
        for a in item.get("addr_info") or ():
            if a.get("local"):
                found.append(_norm_ip(a["local"]) or a["local"])
    return tuple(found)


def read_owned(run_dir: str) -> Owned:
    try:
        with open(os.path.join(run_dir, OWNED_FILE)) as f:
            return parse_owned(f.read())
    except OSError:
        return Owned()


def record_path(run_dir: str, vm: str) -> str:
    return os.path.join(run_dir, vm + ARGV_SUFFIX)


def read_record(run_dir: str, vm: str) -> Optional[VMRecord]:
    try:
        with open(record_path(run_dir, vm)) as f:
            return parse_record(f.read())
    except OSError:
        return None


def gather(desired: Desired) -> Facts:
    """Observe everything ``reconcile`` needs for this desired state (no changes made)."""
    run_dir = desired.run_dir
    try:
        st = os.stat(run_dir)
        run_dir_exists, run_dir_mode = True, st.st_mode & 0o7777
    except OSError:
        run_dir_exists, run_dir_mode = False, None
    owned = read_owned(run_dir)
    links = read_links()

    vx_names = {n.vxlan for n in desired.networks}
    vx_names |= {name for name, kind in owned.links.items() if kind == "vxlan"}
    fdb = {name: read_fdb(name) for name in sorted(vx_names)
           if name in links and links[name].kind == "vxlan"}

    addresses = None
    if desired.underlay and desired.underlay.device in links:
        addresses = parse_addresses(proc.run(
            ["ip", "-j", "addr", "show", "dev", desired.underlay.device]).stdout)
    vms = gather_vms(desired, owned)
    paths: Dict[str, bool] = {}
    for vm in desired.vms:
        for d in vm.disks:
            paths[d.path] = os.path.exists(d.path)
            if d.base:
                paths[d.base] = os.path.exists(d.base)
    for own in owned.vms.values():
        for path in own.disks:
            paths.setdefault(path, os.path.exists(path))
    return Facts(run_dir=run_dir, run_dir_exists=run_dir_exists, run_dir_mode=run_dir_mode,
                 links=links, fdb=fdb, owned=owned, vms=vms, paths=paths,
                 underlay_addresses=addresses, router=gather_router(desired), ksm=gather_ksm(run_dir),
                 netem=gather_netem(run_dir, [t.name for t in desired.taps],
                                    any(t.impair and (t.impair.delay_us or t.impair.loss or t.impair.corrupt
                                                      or t.impair.duplicate) for t in desired.taps)))


def gather_vms(desired: Desired, owned: Owned) -> Dict[str, VMFact]:
    run_dir = desired.run_dir
    wanted = {vm.name: vm for vm in desired.vms}
    names = set(wanted) | set(owned.vms)
    names |= {f[: -len(ARGV_SUFFIX)] for f in proc.list_dir(run_dir) if f.endswith(ARGV_SUFFIX)}
    result: Dict[str, VMFact] = {}
    for name in sorted(names):
        vm = wanted.get(name)
        own = owned.vms.get(name)
        record = read_record(run_dir, name)
        pidfile = (vm.pidfile if vm else "") or (own.pidfile if own else "") or (
            record.pidfile if record else "")
        qmp = (vm.qmp if vm else "") or (own.qmp if own else "") or (record.qmp if record else "")
        # identity: the argv last started (record), else the desired argv
        argv = record.argv if record else (vm.argv if vm else ())
        pid = proc.read_pidfile(pidfile) if pidfile else None
        running, note, starttime, dead = False, "", None, False
        if pid:
            st = proc.stat(pid)
            if st is None or st[0] in ("Z", "X"):
                note, dead = f"pidfile names pid {pid}, which is not running", True
            elif not argv or not proc.argv_matches(proc.cmdline(pid), argv):
                note = f"pidfile names pid {pid}, which is not this VM (pid reused?)"
            else:
                running, starttime = True, st[1]
        exit_file = supervise.exit_path(pidfile) if pidfile else ""
        ended = None if running or not exit_file else supervise.read_exit(exit_file)
        if ended is not None and (pid is None or ended["pid"] == pid):
            note = f"its QEMU (pid {ended['pid']}) {supervise.describe(ended)}"
        elif dead and record is not None:
            note = f"its QEMU (pid {pid}) {supervise.describe(None)}"
        candidates = [pidfile, qmp, record_path(run_dir, name), exit_file]
        if own:
            candidates += list(own.disks)
        files = tuple(p for p in candidates if p and os.path.lexists(p))
        result[name] = VMFact(name=name, pidfile=pidfile, qmp=qmp, pid=pid, running=running,
                              starttime=starttime, record=record, argv=tuple(argv), note=note,
                              files=files, ended=ended)
    return result


# -- host facts (the `facts` command) ---------------------------------------------------------

def host_facts(kvm_timeout: float = 5.0) -> Dict[str, Any]:
    works, detail = kvm.probe(timeout=kvm_timeout)
    return {
        "kvm": {"works": works, "detail": detail},
        "qemu": qemu_info(),
        "qemu_img": shutil.which("qemu-img"),
        "cpus": os.cpu_count() or 1,
        "memory_mib": memory_mib(),
        "kernel": platform.release(),
    }


def qemu_info(binary: str = "qemu-system-x86_64") -> Optional[Dict[str, str]]:
    path = shutil.which(binary)
    if not path:
        return None
    try:
        out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=10,
                             stdin=subprocess.DEVNULL).stdout
    except (OSError, subprocess.TimeoutExpired):
        return {"path": path, "version": ""}
    m = re.search(r"version\s+(\d+(?:\.\d+)+)", out)
    if m:
        return {"path": path, "version": m.group(1)}
    return {"path": path, "version": out.strip().splitlines()[0] if out.strip() else ""}


def memory_mib() -> int:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) // 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


def fdb_wanted(peers: Sequence[str], fdb: Sequence[Any]) -> FrozenSet[Tuple[str, str]]:
    return frozenset({(ZERO_MAC, p) for p in peers} | {(e.mac, e.dst) for e in fdb})

