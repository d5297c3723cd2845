"""The publish pipeline: blueprint -> plan -> hosts -> AppPlan -> desired state -> hosts applied.

Each step is idempotent and safe to re-run after an interruption: hosts are recorded the moment
they exist (provision.py), every host reconciles to its desired state (the host runtime does
only what is missing), and a re-publish of an unchanged app changes nothing. `stop`/`start`
are the same convergence with some VMs marked stopped.
"""

from __future__ import annotations

import os
import posixpath
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Mapping

from .. import faults
from ..errors import BlueprintError, ProviderError, StateError
from ..events import Emit, Event, quiet
from ..host.desired import to_doc
from ..model.blueprint import Blueprint
from ..model.resolve import load_blueprint
from ..paths import private_dir
from ..plan.app import AppPlan, resolve_app
from ..plan.catalogue import Catalogue
from ..plan.fit import check_fit
from ..plan.plan import Plan, make_plan
from ..providers import get_provider
from ..providers.base import Host, Provider
from ..render.host_state import HostSite, desired_states, ready_check
from ..snapshot import memory
from ..snapshot.memory import Resume
from ..snapshot.restore import restore_snapshot, restored_blueprint
from . import capacity, exposure, foreign, health, lifetime, moves, state_backup, teardown, waves
from .blueprints import read_blueprint
from .observe import VmStatus, await_ready, status
from .preflight import check_files
from .lifetime import LifetimeRequest
from .hostrequest import recorded_transport
from .provision import ProvisionOptions, provision
from .sessions import Context
from .seeds import Seed, ensure_seeds, forget_seed
from .ship import ship

DEFAULT_PROVISION_S = 600.0  # stop/start: the bound on making and reaching hosts again
HEALED = "its QEMU (pid"  # in a vm.start's reason: the VM had ended on its own (host/facts.py)


@dataclass
class PublishResult:
    app: str
    plan: Plan
    changed: int  # number of actions the hosts performed
    vms: list[VmStatus] = field(default_factory=list)
    ready_s: float | None = None


def checked_plan(bp: Blueprint, catalogue: Catalogue) -> Plan:
    """The plan, once the blueprint is known to fit the catalogue's host types."""
    problems = check_fit(bp, catalogue)
    if problems:
        raise BlueprintError(problems)
    return make_plan(bp, catalogue)


def publish(ctx: Context, blueprint_path: str, name: str | None = None, provider_name: str = "local",
            wait: bool = False, timeout: float = 300.0, options: ProvisionOptions = ProvisionOptions(),
            resume: Mapping[str, Resume] | None = None,
            lifetime_request: LifetimeRequest = LifetimeRequest()) -> PublishResult:
    """`timeout` bounds the whole publish, waiting for hosts to answer included;
    `options.transport` is how hosts are reached (provider's default, or what the app already
    uses); `resume` (VM -> saved memory state) is recorded when this publish creates the app;
    `lifetime_request` (--ttl, --budget) sets the app's expiry (run/lifetime.py)."""
    started = time.monotonic()
    bp = read_blueprint(blueprint_path)
    app = name or bp.name
    plan = checked_plan(bp, capacity.catalogue_for(provider_name))
    provider = get_provider(provider_name, ctx.paths)
    provider.preflight()  # root, QEMU: what the machine lacks is said first
    if provider_name == "local":  # before anything is made: does it fit what this machine has left?
        capacity.admit_local(ctx.paths, app, plan)
    bp = check_files(bp)
    ctx.emit(Event("plan", f"{len(bp.vms)} VMs on {len(plan.placement.hosts)} hosts", done=True))
    text = Path(blueprint_path).read_text(encoding="utf-8")
    with ctx.state.lock(app, "publish"):
        faults.point("publish.locked")
        existing = ctx.state.app(app)
        if existing and existing.provider != provider_name:
            raise StateError(f"app {app!r} already runs on provider {existing.provider}",
                             hint="destroy it first, or publish under another --name")
        if existing is None:
            # never take over what an app this state does not know left on the hosts
            foreign.refuse(ctx, app, provider)
        options = replace(options, transport=transport_kind(ctx, app, provider, options.transport))
        ctx.state.put_app(app, provider_name, "publishing", os.path.abspath(blueprint_path), text, plan.to_dict())
        # before any host is made: a publish that fails or is killed half-way still expires
        lifetime.settle(ctx, app, provider, plan, bp.lifetime, lifetime_request)
        # recorded once, before any host runs a VM (after the app: its files are then never
        # found without it); a re-run keeps the VMs that have not started yet
        if resume and not memory.pending(ctx.paths, app) and not any(r.extra.get("desired")
                                                                      for r in ctx.state.hosts(app)):
            memory.record(ctx.paths, app, resume)
        faults.point("publish.recorded")
        result = converge(ctx, app, bp, plan, provider, running=None, deadline=started + timeout, options=options)
        faults.point("publish.vms")
        ctx.state.set_app_status(app, "running")
        faults.point("publish.done")
        state_backup.save(ctx.state, app)
    seen = None
    if wait:
        result.ready_s, seen = await_ready(ctx, app, timeout - (time.monotonic() - started))
    result.vms = status(ctx, app, known=seen)  # as they are now (after --wait: ready, no need to ask again)
    return result


def transport_kind(ctx: Context, app: str, provider: Provider, requested: str | None) -> str:
    """The transport for the app's hosts: as requested, else what the app's hosts already
    use, else the provider's default. An app's hosts are all reached the same way."""
    offered = provider.transports
    used = {recorded_transport(r.extra) or offered[0] for r in ctx.state.hosts(app) if r.ref}
    current = next(iter(used)) if len(used) == 1 else None
    if requested is None:
        return current or offered[0]
    if requested not in offered:
        raise ProviderError(f"the {provider.name} provider reaches hosts by {' or '.join(offered)}, "
                            f"not {requested}")
    if current is not None and current != requested:
        raise StateError(f"app {app!r} is reached by {current}, not {requested}",
                         hint=f"publish without --transport, or `ravel destroy {app}` first to change it")
    return requested


def stored_blueprint(ctx: Context, app: str) -> Blueprint:
    rec = ctx.state.require_app(app)
    if rec.blueprint_text is None:  # recovered from its hosts by `ravel doctor --repair-state`
        raise StateError(f"app {app!r} has no blueprint in the state (it was recovered from its hosts)",
                         hint=f"`ravel publish FILE --name {app}` gives it one; `ravel destroy {app}` removes it")
    base = os.path.dirname(rec.blueprint_path) if rec.blueprint_path else None
    return load_blueprint(rec.blueprint_text or "", rec.blueprint_path or app, base)


def reconverge(ctx: Context, app: str) -> int:
    """Apply the app's desired state again, every VM kept as it is (running or stopped): what
    `ravel netem` and `ravel link` do after recording a NIC's new settings. Returns the host
    actions."""
    rec = ctx.state.require_app(app)
    provider = get_provider(rec.provider, ctx.paths)
    flags = {v.name: v.state == "running" for v in ctx.state.vms(app)}
    bp = check_files(stored_blueprint(ctx, app))
    plan = make_plan(bp, capacity.recorded_catalogue(rec.provider, rec.plan))
    result = converge(ctx, app, bp, plan, provider, flags)
    state_backup.save(ctx.state, app)
    return result.changed


def set_running(ctx: Context, app: str, vms: list[str] | None, running: bool) -> int:
    """Stop or start some VMs (all without `vms`); disks are kept. Returns the host actions."""
    rec = ctx.state.require_app(app)
    provider = get_provider(rec.provider, ctx.paths)
    with ctx.state.lock(app, "stop" if not running else "start"):
        known = {v.name: v for v in ctx.state.vms(app)}
        for vm in vms or []:
            if vm not in known:
                raise StateError(f"app {app!r} has no VM {vm!r} (VMs: {', '.join(known)})")
        targets = set(vms or known)
        flags = {name: (running if name in targets else v.state == "running") for name, v in known.items()}
        bp = check_files(stored_blueprint(ctx, app))  # base image formats, as at publish
        plan = make_plan(bp, capacity.recorded_catalogue(rec.provider, rec.plan))
        result = converge(ctx, app, bp, plan, provider, flags)
        ctx.state.set_app_status(app, "running" if any(flags.values()) else "stopped")
        state_backup.save(ctx.state, app)
        return result.changed


def host_sites(ctx: Context, app: str, hosts: Mapping[str, Host]) -> dict[str, HostSite]:
    """Where each provisioned host keeps the app's files, and the accelerator its probe settled
    (provision.py), not the plan's guess."""
    accels = {r.name: r.accel for r in ctx.state.hosts(app)}
    return {
        name: HostSite(name, h.address, h.device, h.run_root, h.data_dir or str(ctx.paths.app_data(app) / name),
                       accels.get(name) or "tcg",  # type: ignore[arg-type]
                       h.guest_deny)
        for name, h in hosts.items()
    }


def converge(ctx: Context, app: str, bp: Blueprint, plan: Plan, provider: Provider,
             running: Mapping[str, bool] | None, deadline: float | None = None,
             options: ProvisionOptions = ProvisionOptions()) -> PublishResult:
    vnis = ctx.state.vnis(app, [n.name for n in bp.networks])
    hosts = provision(ctx, app, plan, provider, deadline or time.monotonic() + DEFAULT_PROVISION_S, options)
    state_backup.save(ctx.state, app)  # the hosts that exist now, before anything runs on them
    faults.point("publish.reached")
    ap = resolve_app(bp, app, plan, vnis)
    sites = host_sites(ctx, app, hosts)
    pending = memory.pending(ctx.paths, app)  # VMs that resume from a memory state
    seeds = ensure_seeds(ctx.paths, ap)  # cloud-init: each VM's NoCloud seed, made once

    live = ctx.state.nic_settings(app)  # `ravel netem` and `ravel link`, kept across publishes

    def make_desired(flags: Mapping[str, bool] | None) -> dict[str, Any]:
        return desired_states(ap, sites, flags, {vm: r.state for vm, r in pending.items()},
                              {vm: s.path for vm, s in seeds.items()}, live)

    desired = make_desired(running)
    memory.check_machines(pending, desired)
    for name, h in hosts.items():
        if h.data_dir is None:  # a host's own data_dir lives on that host
            private_dir(Path(sites[name].data_dir))
    moves.move_vms(ctx, app, provider, hosts, desired, deadline)

    def apply(host: str, wanted: Any, quiet: bool,
              send: Callable[[Any], dict[str, Any] | None] | None = None) -> dict[str, Any]:
        runtime = ctx.hosts.runtime(provider, hosts[host], deadline)
        if not runtime.t.is_local:
            # the host cannot read this machine's files: send kernels and images first
            images = posixpath.join(posixpath.dirname(hosts[host].run_root.rstrip("/")), "images")
            wanted = ship(runtime.t, wanted, images, lambda msg: ctx.emit(Event("vms", f"{host}: {msg}", host=host)))
        # a wave's guests go through the host's `ravel-host boot` (waves.py), when it answers
        report = (send(wanted) if send else None) or runtime.apply(wanted)
        faults.point("publish.applied")
        memory.started(ctx.paths, app, [vm for vm, v in (report.get("vms") or {}).items() if v.get("running")])
        rec = next(r for r in ctx.state.hosts(app) if r.name == host)
        ctx.state.update_host(app, host, extra={**rec.extra, "desired": to_doc(wanted),
                                                health.OBSERVED: health.observation(report.get("vms") or {})})
        n = len(report.get("actions", []))
        for a in report.get("actions", []):
            if a.get("kind") == "vm.start" and HEALED in str(a.get("reason")):  # it had crashed
                ctx.emit(Event("vms", f"{host}: {a.get('target')} started again: {a.get('reason')}",
                               host=host, vm=a.get("target")))
        if not quiet:
            ctx.emit(Event("vms", f"{host}: {n} change{'s' if n != 1 else ''}" if n else f"{host}: up to date",
                           host=host, done=True))
        return report

    # many guests start in waves as CPU frees up, so that booting ones are not starved (waves.py)
    checks = {vm.name: {**ready_check(ap, vm.name, sites[ap.host_of(vm.name)]),
                        **({"host_key": seeds[vm.name].host_key_public} if vm.name in seeds else {})}
              for vm in ap.vms}
    reports = waves.apply_in_waves(ctx, ap, sites, provider, hosts, running, make_desired, apply, checks,
                                   deadline, running_now(ctx, app) | set(pending))
    changed = sum(len(r.get("actions", [])) for r in reports)
    changed += teardown.retire_hosts(ctx, app, provider, set(ap.hosts))
    exposed = exposure.expose(ctx.state, app, provider, hosts, ap, ctx.emit)
    faults.point("publish.exposed")
    record_vms(ctx, ap, sites, running, exposed, seeds)
    return PublishResult(app, plan, changed)  # its VMs as seen: the caller looks when it is time


def running_now(ctx: Context, app: str) -> set[str]:
    """VMs the app's hosts were last told to run: they keep running, never started again."""
    return {vm["name"] for r in ctx.state.hosts(app) for vm in ((r.extra.get("desired") or {}).get("vms") or [])
            if vm.get("running", True)}


def record_vms(ctx: Context, ap: AppPlan, sites: Mapping[str, HostSite], running: Mapping[str, bool] | None,
               exposed: Mapping[str, list[dict[str, Any]]], seeds: Mapping[str, Seed]) -> None:
    """Each VM as `ravel status`, console and logs find it, with whom ravel logs in as and the
    guest's SSH host key to pin; VMs the blueprint dropped go, with their seed and key."""
    app = ap.app
    for vm in ap.vms:
        nics = ap.nics(vm.name)
        site = sites[ap.host_of(vm.name)]
        ctx.state.put_vm(app, vm.name, site.name, "running" if (running or {}).get(vm.name, True) else "stopped", {
            "services": exposed.get(vm.name, []),
            "ips": [str(n.ip) if n.ip else None for n in nics],
            "macs": [n.mac for n in nics],
            "networks": [n.network for n in nics],
            "console": f"{site.run_dir}/{vm.name}.serial",
            "log": f"{site.run_dir}/{vm.name}.log",
            "vnc": f"{site.run_dir}/{vm.name}.vnc",
            **({"agent": f"{site.run_dir}/{vm.name}.qga"} if vm.agent else {}),
            "accel": site.accel,
            "ready": {**ready_check(ap, vm.name, site),
                      **({"host_key": seeds[vm.name].host_key_public} if vm.name in seeds else {})},
            **({"user": seeds[vm.name].user, "host_key": seeds[vm.name].host_key_public,
                "instance_id": seeds[vm.name].instance_id} if vm.name in seeds else
               {"user": vm.login} if vm.login else {}),
        })
    names = {vm.name for vm in ap.vms}
    dropped = [rec.name for rec in ctx.state.vms(app) if rec.name not in names]
    for name in dropped:
        ctx.state.delete_vm(app, name)
    # a VM gone, or without a seed now: one made again later is a new instance with a new key
    for name in dropped + [vm.name for vm in ap.vms if vm.name not in seeds]:
        forget_seed(ctx.paths, app, name)


def publish_snapshot(ctx: Context, snapshot: str, name: str | None = None, provider_name: str = "local",
                     store_url: str | None = None, wait: bool = False, timeout: float = 300.0,
                     options: ProvisionOptions = ProvisionOptions(),
                     lifetime_request: LifetimeRequest = LifetimeRequest()) -> PublishResult:
    """Publish a snapshot as an app (by default named after it). Every layer is fetched and
    its sha256 checked before anything is created: a missing or corrupted layer is a
    StoreError and nothing starts."""
    app = name or snapshot
    existing = ctx.state.app(app)
    # a re-run of this very publish continues it; any other app of that name is not replaced
    # (publishing over it said "nothing to do" and left its record pointing at the snapshot)
    ours = os.path.abspath(restored_blueprint(ctx.paths, snapshot))
    if existing is not None and existing.blueprint_path != ours:
        raise StateError(f"app {app!r} already exists (from {existing.blueprint_path or 'another blueprint'}); "
                         f"snapshot {snapshot} is not published over it",
                         hint=f"publish it under another --name, or `ravel destroy {app}` first")
    catalogue = capacity.catalogue_for(provider_name)

    def fits(bp: Blueprint) -> Blueprint:  # before a layer is fetched: a snapshot can be large
        bp = portable(bp, catalogue, ctx.emit)
        checked_plan(bp, catalogue)
        return bp

    started = time.monotonic()
    got = restore_snapshot(ctx.paths, snapshot, store_url, emit=ctx.emit, check=fits)
    resume = {vm: Resume(str(state), got.machines.get(vm, ())) for vm, state in got.memory.items()}
    return publish(ctx, str(got.blueprint), name=app, provider_name=provider_name, wait=wait,
                   timeout=timeout - (time.monotonic() - started), options=options, resume=resume,
                   lifetime_request=lifetime_request)


def portable(bp: Blueprint, catalogue: Catalogue, emit: Emit = quiet) -> Blueprint:
    """A snapshot's blueprint for another provider: host types the target's catalogue does not
    know (a snapshot of a local app pins local-small) are dropped, so the planner picks the
    target's own; the VMs, networks and disks stay exactly as they were."""
    known = set(catalogue.names())
    kept = tuple(t for t in bp.placement.host_types if t in known)
    if kept == bp.placement.host_types:
        return bp
    gone = [t for t in bp.placement.host_types if t not in known]
    emit(Event("plan", f"host types {', '.join(gone)} are not {catalogue.provider}'s: "
                       f"{'only ' + ', '.join(kept) if kept else 'any of its types'} will be used", done=True))
    return replace(bp, placement=replace(bp.placement, host_types=kept))

