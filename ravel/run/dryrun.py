"""`ravel publish FILE --dry-run`: what a publish would change, found without changing anything.

The same steps as the publish pipeline up to the desired state of every host (plan, AppPlan,
desired_states), but read-only at each one: VNIs, host ids and seeds are the ones the state
and this machine already hold (nothing is allocated or written), hosts are not made (a host the
plan adds has no address yet: a placeholder from TEST-NET-1 stands for it), and each existing
host's runtime is asked what it *would* do (`ravel-host observe`, the reconcile without the
apply), run from memory so that not even the runtime file is left on the host. What the hosts
would do is then told as changes a user reads: hosts created or removed, VMs created, started,
stopped, restarted, moved with their disks or removed, networks, exposed services and
firewall rules added, changed or removed.
"""

from __future__ import annotations

import posixpath
import re
import time
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

from ..errors import BlueprintError, RavelError, StateError
from ..host.desired import Desired
from ..model.blueprint import Blueprint, FirewallRule
from ..plan.app import AppPlan, resolve_app
from ..plan.catalogue import load_catalogue
from ..plan.plan import Plan
from ..providers import get_provider
from ..providers.base import Exposure, Provider
from ..render.host_state import HostSite, desired_states
from ..snapshot import memory
from ..state import FIRST_VNI, HostRecord
from ..transport.hostctl import ReadOnlyRuntime, bundle
from . import exposure, ship
from .blueprints import read_blueprint
from .fanout import parallel
from .preflight import check_files
from .publish import checked_plan, stored_blueprint, transport_kind
from .seeds import planned_seeds
from .sessions import Context, applied_desired, recorded_host

OBSERVE_S = 60.0
# a host the plan adds has no address until it exists: these stand for them in the other
# hosts' documents (tunnel peers, FDB entries) and are shown as the host's name
PLACEHOLDER_PREFIX = "192.0.2."  # TEST-NET-1 (RFC 5737): never anyone's address
VM_KINDS = ("vm.start", "vm.stop", "vm.cont", "vm.remove")


@dataclass(frozen=True)
class Change:
    kind: str  # host | vm | network | service | firewall_rule
    name: str
    action: str  # create | remove | update | repair | start | stop | restart | continue | move | add | change
    detail: str = ""
    host: str | None = None  # where it happens (a VM's host; for a move, where it goes)
    source: str | None = None  # a moved VM: the host it leaves
    disks: tuple[str, ...] = ()  # a moved VM: the disks carried, as they are now

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "name": self.name, "action": self.action, "detail": self.detail,
                "host": self.host, "from": self.source, "disks": list(self.disks)}


@dataclass(frozen=True)
class HostPreview:
    name: str
    status: str  # new | existing | removed
    type: str | None = None
    actions: tuple[dict[str, str], ...] = ()  # what its runtime would do: kind, target, reason
    problems: tuple[str, ...] = ()  # what would stop the publish on it
    sends: tuple[str, ...] = ()  # files this machine would send it first

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "status": self.status, "type": self.type, "actions": list(self.actions),
                "problems": list(self.problems), "sends": list(self.sends)}


@dataclass(frozen=True)
class DryRun:
    app: str
    provider: str
    blueprint: str
    exists: bool  # the app is in the state already
    changes: tuple[Change, ...]
    hosts: tuple[HostPreview, ...] = field(default=())
    notes: tuple[str, ...] = ()

    @property
    def changed(self) -> bool:
        return bool(self.changes)

    def to_dict(self) -> dict[str, Any]:
        return {"app": self.app, "provider": self.provider, "blueprint": self.blueprint, "exists": self.exists,
                "changed": self.changed, "changes": [c.to_dict() for c in self.changes],
                "hosts": [h.to_dict() for h in self.hosts], "notes": list(self.notes)}


def dry_run(ctx: Context, blueprint_path: str, name: str | None = None, provider_name: str = "local",
            transport: str | None = None, timeout: float = OBSERVE_S) -> DryRun:
    deadline = time.monotonic() + timeout
    bp = read_blueprint(blueprint_path)
    app = name or bp.name
    plan = checked_plan(bp, load_catalogue(provider_name))
    provider = get_provider(provider_name, ctx.paths)
    provider.preflight()
    bp = check_files(bp)
    rec = ctx.state.app(app)
    if rec is not None and rec.provider != provider_name:
        raise StateError(f"app {app!r} already runs on provider {rec.provider}",
                         hint="destroy it first, or publish under another --name")
    transport_kind(ctx, app, provider, transport)  # the same refusals as a publish
    notes: list[str] = []
    old_bp = None
    if rec is not None:
        try:
            old_bp = stored_blueprint(ctx, app)
        except BlueprintError:
            notes.append("the blueprint the app was published from no longer loads: networks, services "
                         "and firewall rules are not compared")
    records = {r.name: r for r in ctx.state.hosts(app)} if rec is not None else {}
    applied = {n: d for n, r in records.items() if r.ref and (d := applied_desired(r)) is not None}
    planned = [h.name for h in plan.placement.hosts]
    kept = [h for h in planned if h in applied]
    new = [h for h in planned if h not in applied]
    gone = [n for n, r in records.items() if r.ref and n not in planned]

    ap = resolve_app(bp, app, plan, _vnis(ctx, bp, applied))
    placeholders = {h: f"{PLACEHOLDER_PREFIX}{i + 1}" for i, h in enumerate(new)}
    sites = {h: _site(ctx, app, records[h], applied[h]) for h in kept}
    sites.update({h: _new_site(ctx, app, h, placeholders[h], plan) for h in new})
    resume = memory.pending(ctx.paths, app)
    desired = desired_states(ap, sites, None, {vm: r.state for vm, r in resume.items()},
                             {vm: s.path for vm, s in planned_seeds(ctx.paths, ap).items()},
                             ctx.state.nic_settings(app) if rec is not None else None)
    memory.check_machines(resume, desired)

    def look(host: str) -> HostPreview:
        return _observe(ctx, provider, app, records[host], applied[host], desired[host], deadline, placeholders)

    seen = {p.name: p for p in parallel(look, kept)}
    types = {h.name: h.type.name for h in plan.placement.hosts}
    hosts = [seen.get(h) or HostPreview(h, "new", types[h]) for h in planned]
    hosts += [HostPreview(h, "removed", records[h].type) for h in gone]

    was = _running_vms(applied, ctx.state.vms(app) if rec is not None else [])
    changes = [*_host_changes(hosts, types, records),
               *_vm_changes(ap, desired, applied, was, seen),
               *_network_changes(old_bp, bp),
               *_service_changes(exposure.recorded(ctx.state, app) if rec is not None else [], ap),
               *_firewall_changes(old_bp, bp)]
    return DryRun(app, provider_name, blueprint_path, rec is not None, tuple(changes), tuple(hosts), tuple(notes))


# -- the desired state, read-only -------------------------------------------------------------

def _vnis(ctx: Context, bp: Blueprint, applied: Mapping[str, Desired]) -> dict[str, int]:
    """The VNIs a publish would use, without allocating any: the app's own as its hosts carry
    them, and for a new network the first one no host of this state carries (as
    State.vnis would hand out)."""
    mine = {n.name: n.vni for d in applied.values() for n in d.networks}
    used = set(mine.values())
    for a in ctx.state.apps():
        for r in ctx.state.hosts(a.name):
            d = applied_desired(r)
            used |= {n.vni for n in d.networks} if d is not None else set()
    out: dict[str, int] = {}
    nxt = FIRST_VNI
    for net in bp.networks:
        if net.name in mine:
            out[net.name] = mine[net.name]
            continue
        while nxt in used:
            nxt += 1
        out[net.name] = nxt
        used.add(nxt)
    return out


def _site(ctx: Context, app: str, rec: HostRecord, applied: Desired) -> HostSite:
    """Where an existing host keeps the app's files, as its last applied document says."""
    u = applied.underlay
    disks = [d.path for vm in applied.vms for d in vm.disks]
    # every disk lives in the host's data dir (render.host_state.disk_path); a host without any
    # disk yet is told this machine's folder, which only the new disks it would get depend on
    data_dir = posixpath.dirname(disks[0]) if disks else str(ctx.paths.app_data(app) / rec.name)
    return HostSite(rec.name, rec.address or (u.address if u else ""), u.device if u else "", applied.run_dir,
                    data_dir, (rec.accel or "tcg"), tuple(u.deny) if u else ())  # type: ignore[arg-type]


def _new_site(ctx: Context, app: str, host: str, address: str, plan: Plan) -> HostSite:
    accel = next(h.accel for h in plan.placement.hosts if h.name == host)
    return HostSite(host, address, "eth0", f"/run/ravel-dry-run/{app}/{host}",
                    str(ctx.paths.app_data(app) / host), accel)


def _observe(ctx: Context, provider: Provider, app: str, rec: HostRecord, applied: Desired, wanted: Desired,
             deadline: float, placeholders: Mapping[str, str]) -> HostPreview:
    """What the host's runtime would do for `wanted`, asked without installing anything."""
    host = recorded_host(app, rec, applied)
    try:
        t = ctx.hosts.transport(provider, host)
        sends: list[str] = []
        if not t.is_local:  # as publish would rewrite it: the host's copies of this machine's files
            images = posixpath.join(posixpath.dirname(host.run_root.rstrip("/")), "images")
            wanted, sends = ship.preview(t, wanted, images)
        report = ReadOnlyRuntime(t, bundle(ctx.paths.cache), deadline=deadline).observe(
            wanted, timeout=max(1.0, deadline - time.monotonic()))
    except RavelError as exc:
        return HostPreview(rec.name, "existing", rec.type, problems=(f"not reachable: {exc.message}",))

    def shown(text: str) -> str:
        for h, addr in placeholders.items():
            text = re.sub(rf"(?<![\d.]){re.escape(addr)}(?!\d)", f"<{h}>", text)
        return text

    actions = tuple({k: shown(str(a.get(k, ""))) for k in ("kind", "target", "reason")}
                    for a in report.get("pending") or ())
    return HostPreview(rec.name, "existing", rec.type, actions, tuple(shown(str(e)) for e in report.get("errors") or ()),
                       tuple(sends))


# -- what the hosts would do, told as changes -------------------------------------------------------

def _host_changes(hosts: Iterable[HostPreview], types: Mapping[str, str],
                  records: Mapping[str, HostRecord]) -> list[Change]:
    out = []
    for h in hosts:
        if h.status == "new":
            made = h.name in records and records[h.name].ref
            out.append(Change("host", h.name, "create",
                              f"{types[h.name]}" + ("; made before but never configured" if made else "")))
        elif h.status == "removed":
            out.append(Change("host", h.name, "remove", "no VM of the plan runs there"))
        elif h.problems and not h.actions:
            out.append(Change("host", h.name, "repair", "; ".join(h.problems)))
        else:
            rest = [a for a in h.actions if not _of_a_vm(a)]
            if rest or h.problems:
                kinds: dict[str, int] = {}
                for a in rest:
                    kinds[a["kind"]] = kinds.get(a["kind"], 0) + 1
                what = ", ".join(f"{k} x{n}" if n > 1 else k for k, n in kinds.items())
                out.append(Change("host", h.name, "update", "; ".join(filter(None, [what, *h.problems]))))
    return out


def _of_a_vm(action: Mapping[str, str]) -> bool:
    """A VM's own action (its process, its disks): told with the VM, not with the host."""
    return action["kind"] in VM_KINDS or action["kind"] in ("disk.create", "disk.delete")


def _running_vms(applied: Mapping[str, Desired], records: Iterable[Any]) -> dict[str, tuple[str, tuple[str, ...]]]:
    """VM -> (the host it is on, its disks there), from what was applied, else the state."""
    out: dict[str, tuple[str, tuple[str, ...]]] = {}
    for host, d in applied.items():
        for vm in d.vms:
            out[vm.name] = (host, tuple(x.path for x in vm.disks))
    for r in records:
        if r.name not in out and r.host:
            out[r.name] = (r.host, ())
    return out


def _vm_changes(ap: AppPlan, desired: Mapping[str, Desired], applied: Mapping[str, Desired],
                was: Mapping[str, tuple[str, tuple[str, ...]]], seen: Mapping[str, HostPreview]) -> list[Change]:
    out = []
    for vm in ap.vms:
        host = ap.host_of(vm.name)
        if vm.name not in was:
            out.append(Change("vm", vm.name, "create", "new in the blueprint", host))
            continue
        old_host, disks = was[vm.name]
        if old_host != host:
            n = len(disks)
            out.append(Change("vm", vm.name, "move", f"{old_host} -> {host}, {n} disk{'s' if n != 1 else ''} carried",
                              host, old_host, disks))
            continue
        if host not in seen:
            out.append(Change("vm", vm.name, "start", f"its host {host} is configured anew", host))
            continue
        change = _vm_action(vm.name, desired[host], seen[host].actions)
        if change is not None:
            out.append(Change("vm", vm.name, change[0], change[1], host))
    for name, (old_host, _) in sorted(was.items()):
        if name not in ap.placement.vm_host:
            out.append(Change("vm", name, "remove", "no longer in the blueprint", old_host))
    return out


def _vm_action(vm: str, desired: Desired, actions: Iterable[Mapping[str, str]]) -> tuple[str, str] | None:
    mine = next((v for v in desired.vms if v.name == vm), None)
    paths = {d.path for d in mine.disks} if mine else set()
    reasons: dict[str, str] = {}
    for a in actions:
        if (a["target"] == vm and a["kind"] in VM_KINDS) or a["target"] in paths:
            reasons.setdefault(a["kind"], a["reason"])
    if "vm.stop" in reasons and "vm.start" in reasons:
        return "restart", reasons["vm.start"]
    for kind, action in (("vm.start", "start"), ("vm.cont", "continue"), ("vm.stop", "stop")):
        if kind in reasons:
            return action, reasons[kind]
    if reasons:
        return "update", "; ".join(f"{k}: {r}" for k, r in reasons.items())
    return None


def _network_changes(old: Blueprint | None, new: Blueprint) -> list[Change]:
    before = {n.name: n for n in old.networks} if old is not None else {}
    after = {n.name: n for n in new.networks}
    out = []
    for name, n in after.items():
        if name not in before:
            out.append(Change("network", name, "add", str(n.subnet)))
        elif before[name] != n:
            diff = [f"{f} {getattr(before[name], f)} -> {getattr(n, f)}"
                    for f in ("subnet", "gateway", "dhcp", "dns", "mtu", "nat")
                    if getattr(before[name], f) != getattr(n, f)]
            out.append(Change("network", name, "change", ", ".join(diff)))
    out += [Change("network", name, "remove", str(n.subnet)) for name, n in before.items() if name not in after]
    return out


def _service_changes(current: Iterable[Exposure], ap: AppPlan) -> list[Change]:
    before = {(e.vm, e.port, e.protocol): e for e in current}
    after = {(f.vm, f.port, f.protocol): f for f in ap.forwards}
    out = []
    for key, f in after.items():
        name = f"{f.vm}:{f.port}/{f.protocol}"
        e = before.get(key)
        if e is None:
            out.append(Change("service", name, "add", f"on {f.host}", f.host))
            continue
        diff = [what for what, differs in (
            (f"host {e.host} -> {f.host}", e.host != f.host),
            (f"guest address {e.target} -> {f.target}", e.target != f.target),
            (f"host port {e.host_port} -> {f.host_port}", f.host_port is not None and f.host_port != e.host_port),
        ) if differs]
        if diff:
            out.append(Change("service", name, "change", ", ".join(diff), f.host))
    out += [Change("service", f"{e.vm}:{e.port}/{e.protocol}", "remove", e.label(), e.host)
            for key, e in before.items() if key not in after]
    return out


def _firewall_changes(old: Blueprint | None, new: Blueprint) -> list[Change]:
    before = set(old.firewall) if old is not None else set()
    after = set(new.firewall)
    deny_before = set(old.routing_deny) if old is not None else set()
    deny_after = set(new.routing_deny)
    out = [Change("firewall_rule", _rule_name(r), "add") for r in new.firewall if r not in before]
    out += [Change("firewall_rule", _rule_name(r), "remove") for r in (old.firewall if old else ()) if r not in after]
    out += [Change("firewall_rule", f"deny routing {a} <-> {b}", "add") for a, b in new.routing_deny
            if (a, b) not in deny_before]
    out += [Change("firewall_rule", f"deny routing {a} <-> {b}", "remove") for a, b in (old.routing_deny if old else ())
            if (a, b) not in deny_after]
    return out


def _rule_name(r: FirewallRule) -> str:
    ports = ",".join(f"{a}" if a == b else f"{a}-{b}" for a, b in r.ports)
    return f"allow {r.src} -> {r.dst} {r.protocol}" + (f" {ports}" if ports else "")
