"""PURE: desired state + observed facts -> the minimal list of actions, each with its reason.

Nothing here touches the system; ``apply`` runs what this returns. Order of the plan:
run_dir, underlay MTU, bridges, VXLAN devices, FDB, taps, disks, VM stops (and removals),
VM starts. Ownership comes only from run_dir/owned.json (``facts.owned``): a device that is not
listed there is never deleted or replaced, only adopted when it already has the wanted kind.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Set, Tuple

from . import netem, services, supervise
from .desired import VXLAN_PORT, ZERO_MAC, Desired, Network, Tap
from .facts import ARGV_SUFFIX, Facts, Link, argv_sha256, fdb_wanted

Argv = Tuple[str, ...]

# Every kind of action. ``apply`` aborts the rest of a plan when a run_dir, device, FDB or
# disk.create action fails; VM actions (and disk.delete) are independent of each other.
KINDS = (
    "run_dir.create", "run_dir.chmod", "underlay.mtu",
    "bridge.delete", "bridge.recreate", "bridge.create", "bridge.update",
    "vxlan.delete", "vxlan.recreate", "vxlan.create", "vxlan.update",
    "fdb.delete", "fdb.add",
    "tap.delete", "tap.recreate", "tap.create", "tap.update",
    *services.KINDS,  # gateway addresses, sysctls, nft tables, dnsmasq
    "ksm.on", "ksm.release",
    "disk.create",
    "vm.stop", "vm.remove", "disk.delete",
    "vm.start", "vm.cont",
    "tap.impair", "vm.link",  # netem.py: after the VMs start (a tap's qdisc, a QEMU's links)
    "link.delete", "run_dir.delete",  # destroy only
)

# Phases, in order; within a phase, deletions of stale items come first, then per item.
PHASES = ("run_dir", "underlay", "bridge", "vxlan", "fdb", "tap", "router", "ksm", "disk.create",
          "vm.stop", "vm.start", "destroy")


def phase(kind: str) -> int:
    if kind in ("vm.stop", "vm.remove", "disk.delete"):
        return PHASES.index("vm.stop")
    if kind in ("link.delete", "run_dir.delete"):
        return PHASES.index("destroy")
    if kind in ("vm.cont", "tap.impair", "vm.link"):
        return PHASES.index("vm.start")
    if kind in PHASES:
        return PHASES.index(kind)
    return PHASES.index(kind.split(".")[0])


@dataclass(frozen=True)
class Action:
    kind: str  # one of KINDS
    target: str  # device name, "vxlan mac->dst", disk path, VM name
    reason: str  # why it is needed, for humans
    argv: Tuple[Argv, ...] = ()  # commands to run, in order (device, FDB and disk actions)
    params: Dict[str, Any] = field(default_factory=dict)  # for run_dir and VM actions

    def brief(self) -> Dict[str, str]:
        return {"kind": self.kind, "target": self.target, "reason": self.reason}


def _ip(*args: Any) -> Argv:
    return ("ip",) + tuple(str(a) for a in args)


def _bridge(*args: Any) -> Argv:
    return ("bridge",) + tuple(str(a) for a in args)


# -- preflight -----------------------------------------------------------------------------------

def problems(desired: Desired, facts: Facts) -> List[str]:
    """What makes the desired state impossible to reach here; checked before any change."""
    found: List[str] = []
    u = desired.underlay
    if u and u.device not in facts.links:
        found.append(f"underlay device {u.device!r} does not exist on this host")
    elif u and facts.underlay_addresses is not None and u.address not in facts.underlay_addresses:
        found.append(f"underlay address {u.address} is not assigned to {u.device!r} (it has "
                     f"{', '.join(facts.underlay_addresses) or 'no address'})")
    for name, kind in desired.link_kinds().items():
        link = facts.links.get(name)
        if link and link.kind != kind and name not in facts.owned.links:
            found.append(f"{name!r} exists as a {link.kind or 'physical'} device that app "
                         f"{desired.app!r} did not create; refusing to replace it with a {kind}")
    for vm in desired.vms:
        for d in vm.disks:
            if d.base and not facts.exists(d.path) and not facts.exists(d.base):
                found.append(f"VM {vm.name!r}: base image {d.base} of disk {d.path} not found")
    found += services.router_problems(desired, facts.router)
    return found


# -- reconcile -----------------------------------------------------------------------------------

def reconcile(desired: Desired, facts: Facts) -> List[Action]:
    """The actions that take the observed host to the desired state; [] when converged."""
    actions: List[Action] = []
    want = desired.link_kinds()
    owned = facts.owned.links
    fresh_bridges: Set[str] = set()  # (re)created here: existing ports lost their master
    fresh_taps: Set[str] = set()

    if not facts.run_dir_exists:
        actions.append(Action("run_dir.create", desired.run_dir, "missing",
                              params={"path": desired.run_dir, "mode": 0o700}))
    elif facts.run_dir_mode != 0o700:
        actions.append(Action("run_dir.chmod", desired.run_dir,
                              f"mode {oct(facts.run_dir_mode or 0)}, want 0o700",
                              params={"path": desired.run_dir, "mode": 0o700}))

    u = desired.underlay
    if u and u.mtu and u.device in facts.links and facts.links[u.device].mtu < u.mtu:
        actions.append(Action("underlay.mtu", u.device,
                              f"mtu {facts.links[u.device].mtu} < {u.mtu} (VXLAN adds 50 bytes)",
                              (_ip("link", "set", "dev", u.device, "mtu", u.mtu),)))

    def stale(kind: str) -> List[str]:
        return sorted(n for n, k in owned.items()
                      if k == kind and n not in want and n in facts.links
                      and facts.links[n].kind == kind)

    # bridges
    for name in stale("bridge"):
        actions.append(Action("bridge.delete", name, "no longer desired",
                              (_ip("link", "del", "dev", name),)))
    for net in desired.networks:
        act = _bridge_action(net, facts.links.get(net.bridge), net.bridge in owned)
        if act:
            actions.append(act)
            if act.kind in ("bridge.create", "bridge.recreate"):
                fresh_bridges.add(net.bridge)

    # VXLAN devices and their FDB
    fdb_actions: List[Action] = []
    for name in stale("vxlan"):
        actions.append(Action("vxlan.delete", name, "no longer desired",
                              (_ip("link", "del", "dev", name),)))
    for net in desired.networks:
        link = facts.links.get(net.vxlan)
        act = _vxlan_action(net, link, desired.underlay.address if desired.underlay else "",
                            net.vxlan in owned, net.bridge in fresh_bridges)
        fresh = False
        if act:
            actions.append(act)
            fresh = act.kind in ("vxlan.create", "vxlan.recreate")
        if link is not None and link.kind != "vxlan" and net.vxlan not in owned:
            continue  # refused in problems(); no FDB on a device we do not control
        observed = frozenset() if fresh else facts.fdb.get(net.vxlan, frozenset())
        fdb_actions.extend(_fdb_actions(net, observed))
    actions.extend(fdb_actions)

    # taps
    for name in stale("tap"):
        actions.append(Action("tap.delete", name, "no longer desired",
                              (_ip("link", "del", "dev", name),)))
    for tap in desired.taps:
        act = _tap_action(tap, facts.links.get(tap.name), tap.name in owned,
                          tap.bridge in fresh_bridges)
        if act:
            actions.append(act)
            if act.kind in ("tap.create", "tap.recreate"):
                fresh_taps.add(tap.name)

    # network services: before any VM starts, so a booting guest finds DHCP and its gateway
    actions += [_from_step(s) for s in services.router_actions(desired, facts.router, fresh_bridges)]

    # disks
    for vm in desired.vms:
        for d in vm.disks:
            if facts.exists(d.path):
                continue
            if d.base:
                cmd = ("qemu-img", "create", "-f", "qcow2", "-b", d.base, "-F",
                       d.base_format or "qcow2", d.path)
                why = f"missing (overlay over {d.base})"
            else:
                cmd = ("qemu-img", "create", "-f", "qcow2", d.path, f"{d.size_mib}M")
                why = f"missing (blank, {d.size_mib} MiB)"
            actions.append(Action("disk.create", d.path, why, (cmd,), {"path": d.path}))

    # same-page merging for several guests of one image (ksm.py); on before they boot
    k = facts.ksm
    if k is not None and k.run is not None:
        if desired.ksm and (not k.marked or k.run != "1"):
            actions.append(Action("ksm.on", "ksm", "several guests of one base image here" if k.run != "1"
                                  else "on already; this host notes that it wants it",
                                  params={"run_dir": desired.run_dir}))
        elif not desired.ksm and k.marked:
            actions.append(Action("ksm.release", "ksm", "no longer wanted here", params={"run_dir": desired.run_dir}))

    # VM stops, removals
    restart: Dict[str, str] = {}
    wanted_vms = {vm.name: vm for vm in desired.vms}
    for vm in desired.vms:
        f = facts.vms.get(vm.name)
        if not f or not f.running:
            continue
        if not vm.running:
            actions.append(_stop(f, "running=false", vm.shutdown_s))
            continue
        if f.record is not None and f.record.resume == "pending":
            # the guest never ran: its disks are as the snapshot left them, try again
            restart[vm.name] = "its resume from a memory state did not finish"
        elif f.record is not None and f.record.sha256 != argv_sha256(vm.argv):
            restart[vm.name] = "configuration changed"
        else:
            used = sorted(_vm_taps(vm.argv) & fresh_taps)
            if used:
                restart[vm.name] = f"tap {', '.join(used)} was (re)created"
        if vm.name in restart:
            actions.append(_stop(f, restart[vm.name], vm.shutdown_s))
    gone = [(name, f) for name, f in sorted(facts.vms.items()) if name not in wanted_vms]
    for name, f in gone:
        if f.running:
            actions.append(_stop(f, "no longer desired"))
    for name, f in gone:
        if f.files or f.running:
            actions.append(Action("vm.remove", name, "no longer desired",
                                  params={"files": _vm_files(facts, name)}))
    wanted_disks = {d.path for vm in desired.vms for d in vm.disks}
    for name in sorted(wanted_vms):
        own = facts.owned.vms.get(name)
        for path in (own.disks if own else ()):
            if path not in wanted_disks and facts.exists(path):
                actions.append(Action("disk.delete", path, f"no longer a disk of VM {name!r}",
                                      params={"path": path}))

    # VM starts
    for vm in desired.vms:
        if not vm.running:
            continue
        f = facts.vms.get(vm.name)
        record = f.record if f else None
        if f and f.running and vm.name not in restart:
            if record is not None and record.resume == "loaded":
                actions.append(Action("vm.cont", vm.name, "its memory state was loaded but it was "
                                      "never continued", params={
                                          "name": vm.name, "qmp": f.qmp, "record_doc": _record_doc(record),
                                          "record": os.path.join(desired.run_dir, vm.name + ARGV_SUFFIX)}))
            continue
        reason = restart.get(vm.name) or ("not running" + (f"; {f.note}" if f and f.note else ""))
        params = {
            "name": vm.name, "argv": list(vm.argv), "pidfile": vm.pidfile, "qmp": vm.qmp,
            "sha256": argv_sha256(vm.argv),
            "record": os.path.join(desired.run_dir, vm.name + ARGV_SUFFIX),
        }
        if vm.incoming:
            # at most once: a guest that ran on has changed its disks since the state was saved
            if record is None or record.resume == "pending":
                params["incoming"] = vm.incoming
                reason += "; resumes from its memory state"
            else:
                reason += "; boots from its disks (it already ran on from its memory state)"
        actions.append(Action("vm.start", vm.name, reason, params=params))
    if facts.netem is not None:
        actions += _netem_actions(desired, facts, fresh_taps, restart)
    return actions


def _netem_actions(desired: Desired, facts: Facts, fresh_taps: Set[str],
                   restart: Dict[str, str]) -> List[Action]:
    """Each tap's impairment and each running QEMU's pulled cables (netem.py), once the VMs run."""
    assert facts.netem is not None
    out: List[Action] = []
    for tap in desired.taps:
        want = _impair_doc(tap.impair)
        fresh = tap.name in fresh_taps
        have = {} if fresh else netem.observed_impair(tap.name, facts.netem)
        if have == want:
            continue
        q = facts.netem.taps.get(tap.name)
        root = "" if fresh or q is None else q.root
        clsact = bool(q and q.clsact and not fresh)
        mode = netem.mode_for(want, facts.netem.kernel_netem)
        why = (f"impairment {netem.describe(want)}, is {netem.describe(have)}" if have is not None
               else f"impairment {netem.describe(want)}, is not known (no record of what is there)")
        out.append(Action("tap.impair", tap.name, why, params={
            "run_dir": desired.run_dir, "tap": tap.name, "want": want, "mode": mode,
            "stop": q.relay if q else None,
            "cmds": [list(c) for c in netem.tc_commands(tap.name, want, root, tap.mtu, clsact, mode)]}))
    for vm in desired.vms:
        if not vm.running:
            continue
        f = facts.vms.get(vm.name)
        started = not (f and f.running) or vm.name in restart
        have = [] if started else netem.observed_down(vm.name, f.pid, f.starttime, facts.netem)
        want = sorted(vm.links_down)
        if have == want:
            continue
        out.append(Action("vm.link", vm.name, f"cable pulled on {', '.join(want) or 'none'}, "
                          f"is {', '.join(have) or 'none'}", params={
                              "run_dir": desired.run_dir, "name": vm.name, "qmp": vm.qmp,
                              "pidfile": vm.pidfile, "down": want, "netdevs": _netdevs(vm.argv)}))
    return out


def _impair_doc(impair: Any) -> Dict[str, Any]:
    if impair is None:
        return {}
    return {k: v for k, v in vars(impair).items() if v}


def _netdevs(argv: Sequence[str]) -> List[str]:
    """The -netdev ids of a QEMU command line."""
    out = []
    for flag, value in zip(argv, argv[1:]):
        if flag == "-netdev":
            for part in value.split(","):
                if part.startswith("id="):
                    out.append(part[3:])
    return out


def _record_doc(record: Any) -> Dict[str, Any]:
    return {"sha256": record.sha256, "argv": list(record.argv), "pidfile": record.pidfile,
            "qmp": record.qmp, "resume": record.resume, "incoming": record.incoming}


def _bridge_action(net: Network, link: Optional[Link], owned: bool) -> Optional[Action]:
    name = net.bridge
    create = (
        _ip("link", "add", name, "type", "bridge", "mcast_snooping", 0),
        _ip("link", "set", "dev", name, "mtu", net.mtu),
        _ip("link", "set", "dev", name, "up"),
    )
    if link is None:
        return Action("bridge.create", name, f"missing (network {net.name})", create)
    if link.kind != "bridge":
        if not owned:
            return None
        return Action("bridge.recreate", name,
                      f"is a {link.kind or 'physical'} device, want bridge",
                      (_ip("link", "del", "dev", name),) + create)
    diffs: List[str] = []
    cmds: List[Argv] = []
    if link.mcast_snooping not in (0, None):
        diffs.append("multicast snooping on")
        cmds.append(_ip("link", "set", "dev", name, "type", "bridge", "mcast_snooping", 0))
    _link_updates(name, link, net.mtu, None, False, diffs, cmds)
    return Action("bridge.update", name, "; ".join(diffs), tuple(cmds)) if cmds else None


def _link_updates(name: str, link: Link, mtu: int, master: Optional[str], master_fresh: bool,
                  diffs: List[str], cmds: List[Argv]) -> None:
    """The in-place fixes every kind of link shares: MTU, bridge membership (a bridge that
    was just recreated has lost its ports, so they are re-attached), and up."""
    if link.mtu != mtu:
        diffs.append(f"mtu {link.mtu}, want {mtu}")
        cmds.append(_ip("link", "set", "dev", name, "mtu", mtu))
    if master is not None and (link.master != master or master_fresh):
        diffs.append(f"master {link.master or 'none'}, want {master}"
                     if not master_fresh else f"bridge {master} was (re)created")
        cmds.append(_ip("link", "set", "dev", name, "master", master))
    if not link.up:
        diffs.append("down")
        cmds.append(_ip("link", "set", "dev", name, "up"))


def _vxlan_action(net: Network, link: Optional[Link], local: str, owned: bool,
                  bridge_fresh: bool) -> Optional[Action]:
    name = net.vxlan
    create = (
        _ip("link", "add", name, "type", "vxlan", "id", net.vni, "local", local,
            "dstport", VXLAN_PORT, "nolearning"),
        _ip("link", "set", "dev", name, "mtu", net.mtu),
        _ip("link", "set", "dev", name, "master", net.bridge),
        _ip("link", "set", "dev", name, "up"),
    )
    if link is None:
        return Action("vxlan.create", name, f"missing (network {net.name}, vni {net.vni})", create)
    diffs: List[str] = []
    if link.kind != "vxlan":
        diffs.append(f"is a {link.kind or 'physical'} device, want vxlan")
    else:
        if link.vni != net.vni:
            diffs.append(f"vni {link.vni}, want {net.vni}")
        if (link.local or "") != local:
            diffs.append(f"local {link.local or 'unset'}, want {local}")
        if link.port != VXLAN_PORT:
            diffs.append(f"dstport {link.port}, want {VXLAN_PORT}")
        if link.learning:
            diffs.append("learning on")
        if link.remote:
            diffs.append(f"has group/remote {link.remote}")
        if link.lower:
            diffs.append(f"bound to dev {link.lower}")
    if diffs:
        if not owned and link.kind != "vxlan":
            return None
        return Action("vxlan.recreate", name, "; ".join(diffs),
                      (_ip("link", "del", "dev", name),) + create)
    cmds: List[Argv] = []
    _link_updates(name, link, net.mtu, net.bridge, bridge_fresh, diffs, cmds)
    return Action("vxlan.update", name, "; ".join(diffs), tuple(cmds)) if cmds else None


def _fdb_actions(net: Network, observed: frozenset) -> List[Action]:
    wanted = fdb_wanted(net.peers, net.fdb)
    out: List[Action] = []
    for mac, dst in sorted(observed - wanted):
        what = "flood entry" if mac == ZERO_MAC else "entry"
        out.append(Action("fdb.delete", f"{net.vxlan} {mac} -> {dst}",
                          f"stale {what} (peer or MAC no longer desired)",
                          (_bridge("fdb", "del", mac, "dev", net.vxlan, "dst", dst),)))
    for mac, dst in sorted(wanted - observed):
        if mac == ZERO_MAC:
            cmd = _bridge("fdb", "append", mac, "dev", net.vxlan, "dst", dst)
            why = f"missing flood entry for peer {dst} (head-end replication)"
        else:
            cmd = _bridge("fdb", "replace", mac, "dev", net.vxlan, "dst", dst, "static")
            why = f"missing entry for remote MAC {mac}"
        out.append(Action("fdb.add", f"{net.vxlan} {mac} -> {dst}", why, (cmd,)))
    return out


def _tap_action(tap: Tap, link: Optional[Link], owned: bool, bridge_fresh: bool
                ) -> Optional[Action]:
    name = tap.name
    create = (
        _ip("tuntap", "add", "dev", name, "mode", "tap"),
        _ip("link", "set", "dev", name, "mtu", tap.mtu),
        _ip("link", "set", "dev", name, "master", tap.bridge),
        _ip("link", "set", "dev", name, "up"),
    )
    if link is None:
        return Action("tap.create", name, f"missing (on bridge {tap.bridge})", create)
    if link.kind != "tap":
        if not owned:
            return None
        return Action("tap.recreate", name, f"is a {link.kind or 'physical'} device, want tap",
                      (_ip("link", "del", "dev", name),) + create)
    diffs: List[str] = []
    cmds: List[Argv] = []
    _link_updates(name, link, tap.mtu, tap.bridge, bridge_fresh, diffs, cmds)
    return Action("tap.update", name, "; ".join(diffs), tuple(cmds)) if cmds else None


def _stop(f: Any, reason: str, shutdown_s: int = 0) -> Action:
    """Stop a VM; `shutdown_s` > 0 asks its guest to shut down first (its disks are kept, so
    what it has not written yet matters; a VM being removed is just powered off)."""
    params = {"pid": f.pid, "starttime": f.starttime, "argv": list(f.argv), "qmp": f.qmp, "pidfile": f.pidfile}
    if shutdown_s:
        params["shutdown_s"] = shutdown_s
    return Action("vm.stop", f.name, reason, params=params)


def _vm_files(facts: Facts, name: str) -> List[str]:
    f = facts.vms[name]
    own = facts.owned.vms.get(name)
    # the exit record too: its supervisor writes it when the stop before this removal ends QEMU
    paths = [f.pidfile, f.qmp, os.path.join(facts.run_dir, name + ARGV_SUFFIX),
             supervise.exit_path(f.pidfile) if f.pidfile else ""]
    paths += list(own.disks) if own else []
    return sorted({p for p in paths if p} | set(f.files))


def _vm_taps(argv: Sequence[str]) -> Set[str]:
    taps = set()
    for arg in argv:
        for part in arg.split(","):
            if part.startswith("ifname="):
                taps.add(part[len("ifname="):])
    return taps


# -- teardown (destroy) -----------------------------------------------------------------------

def teardown(facts: Facts, desired: Optional[Desired] = None, prefixes: Sequence[str] = (),
             keep: Sequence[str] = ("lo",)) -> List[Action]:
    """Everything that removes an app from this host: VMs, its links, its run_dir.

    Links come from owned.json, from the desired document if given (only when they still have
    the kind it names), and from caller-given name ``prefixes`` (never a physical device or a
    name in ``keep``). Idempotent: [] once nothing is left.
    """
    actions: List[Action] = [_from_step(s) for s in services.router_teardown(facts.run_dir, facts.router)]
    if facts.ksm is not None and facts.ksm.marked:
        actions.append(Action("ksm.release", "ksm", "app destroyed", params={"run_dir": facts.run_dir}))
    for name, f in sorted(facts.vms.items()):
        if f.running:
            actions.append(_stop(f, "app destroyed"))
    for tap, q in sorted((facts.netem.taps if facts.netem else {}).items()):
        if q.relay:  # a netem relay (host/relay_netem.py) outlives a deleted namespace: end it
            actions.append(Action("tap.impair", tap, "app destroyed (its netem relay)", params={
                "run_dir": facts.run_dir, "tap": tap, "want": {}, "mode": "", "stop": q.relay, "cmds": []}))
    for name, f in sorted(facts.vms.items()):
        files = [p for p in _vm_files(facts, name) if p in f.files or facts.exists(p)]
        if desired:
            for vm in desired.vms:
                if vm.name == name:
                    files += [d.path for d in vm.disks if facts.exists(d.path)]
        files = sorted(set(files))
        if f.running or files:
            actions.append(Action("vm.remove", name, "app destroyed", params={"files": files}))
    targets: Dict[str, str] = {}
    for name, kind in facts.owned.links.items():
        link = facts.links.get(name)
        if link and link.kind == kind:
            targets[name] = kind
    if desired:
        for name, kind in desired.link_kinds().items():
            link = facts.links.get(name)
            if link and link.kind == kind:
                targets[name] = kind
    protected = set(keep)
    if desired and desired.underlay:
        protected.add(desired.underlay.device)
    for name, link in facts.links.items():
        if any(name.startswith(p) for p in prefixes) and link.kind and name not in protected:
            targets.setdefault(name, link.kind)
    order = {"tap": 0, "vxlan": 1, "bridge": 2}
    for name in sorted(targets, key=lambda n: (order.get(targets[n], 3), n)):
        if name in protected:
            continue
        actions.append(Action("link.delete", name, f"app destroyed ({targets[name]})",
                              (_ip("link", "del", "dev", name),)))
    if facts.run_dir_exists:
        actions.append(Action("run_dir.delete", facts.run_dir, "app destroyed",
                              params={"path": facts.run_dir}))
    return actions


def _from_step(step: Any) -> Action:
    return Action(step.kind, step.target, step.reason, step.argv, dict(step.params))
