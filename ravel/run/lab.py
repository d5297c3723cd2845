"""The publish pipeline that joins the pure core to providers, transports and state, and the
Lab object every command goes through. Each operation is idempotent and safe to re-run after
interruption. The other stages live next to it: provision.py (making and reaching hosts),
moves.py (VMs that change host), observe.py (status, readiness), vm_access.py (console, logs),
teardown.py (retiring hosts, destroy).
"""

from __future__ import annotations

import os
import posixpath
import sqlite3
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Iterator, Any, Callable, Mapping

from ..errors import BlueprintError, ProviderError, StateError, TransportError
from ..model.blueprint import Blueprint
from ..model.resolve import load_blueprint
from ..paths import Paths
from ..plan.catalogue import Catalogue, load_catalogue
from ..plan.fit import check_fit
from ..plan.network import plan_network
from ..plan.plan import Plan, make_plan
from ..providers import get_provider
from ..providers.base import Host, Provider
from ..render.host_state import HostSite, desired_states
from ..state import State
from ..transport.base import Transport
from ..transport.hostctl import HostRuntime, bundle, install
from .blueprints import read_blueprint
from . import exposure, moves, observe, teardown, vm_access
from .events import Emit, Event, quiet
from . import resume as resumes
from .resume import Resume
from .fanout import parallel
from .observe import VmStatus
from .preflight import check_files
from .provision import provision
from .ship import ship

__all__ = ["Lab", "PublishResult", "VmStatus", "open_state"]
DEFAULT_PROVISION_S = 600.0  # stop/start: the bound on making and reaching hosts again
REACH_S = 120.0  # without a publish deadline: how long a host may take to answer at all


@dataclass
class PublishResult:
    app: str
    plan: Plan
    changed: int  # number of actions the hosts performed
    vms: list[VmStatus] = field(default_factory=list)
    ready_s: float | None = None


class Lab:
    """One ravel set-up on this machine: its state, paths and providers."""

    def __init__(self, paths: Paths, emit: Emit = quiet) -> None:
        self.paths = paths
        self.emit = emit
        self._state: State | None = None
        # one transport (one SSH connection) and one installed runtime per host, reused
        self._transports: dict[tuple[str, str], Transport] = {}
        self._runtimes: dict[tuple[str, str], HostRuntime] = {}

    @property
    def state(self) -> State:
        # opened on first use, so checks that need no state (root, QEMU) come first
        if self._state is None:
            self._state = open_state(self.paths)
        return self._state

    def close(self) -> None:
        for t in self._transports.values():
            t.close()
        self._transports.clear()
        self._runtimes.clear()
        if self._state is not None:
            self._state.close()

    # -- helpers -----------------------------------------------------------------------------
    def _transport(self, provider: Provider, host: Host) -> Transport:
        """The host's transport, made once per Lab: SSH keeps one connection per host."""
        key = (host.app, host.name)
        if key not in self._transports:
            if not host.extra:  # a Host rebuilt by a caller: how to reach it is in the state
                rec = next((r for r in self.state.hosts(host.app) if r.name == host.name), None)
                if rec is not None and rec.extra.get("host"):
                    host = replace(host, extra=rec.extra["host"])
            self._transports[key] = provider.transport(host)
        return self._transports[key]

    def _runtime(self, provider: Provider, host: Host, deadline: float | None = None,
                 reach_s: float = REACH_S) -> HostRuntime:
        """The host runtime on `host`, sent there first if the host lacks this exact version.
        Reaching the host (an SSH host may still be booting) is bounded by `deadline`, else by
        `reach_s`; every later call is bounded by `deadline` too."""
        key = (host.app, host.name)
        rt = self._runtimes.get(key)
        if rt is None:
            t = self._transport(provider, host)
            left = reach_s if deadline is None else deadline - time.monotonic()
            if left <= 0:
                raise TransportError(f"{host.name}: out of time before the host was reached",
                                     hint="raise --timeout; publishing again continues where this stopped")
            # next to the app's run dir, so the app's clean-up takes it along
            remote = install(t, bundle(self.paths.cache), posixpath.dirname(host.run_root.rstrip("/")), left)
            rt = self._runtimes[key] = HostRuntime(t, remote)
        rt.deadline = deadline
        return rt

    def _stored_blueprint(self, app: str) -> Blueprint:
        rec = self.state.require_app(app)
        base = os.path.dirname(rec.blueprint_path) if rec.blueprint_path else None
        return load_blueprint(rec.blueprint_text or "", rec.blueprint_path or app, base)

    # -- publish -----------------------------------------------------------------------------
    def publish(self, blueprint_path: str, name: str | None = None, provider_name: str = "local",
                wait: bool = False, timeout: float = 300.0, host_image: str | None = None,
                ssh_from: str | None = None, transport: str | None = None,
                resume: Mapping[str, Resume] | None = None) -> PublishResult:
        """`timeout` bounds the whole publish, waiting for hosts to answer included;
        `transport` is how hosts are reached (provider's default, or what the app already uses);
        `resume` (VM -> saved memory state) is recorded when this publish creates the app."""
        started = time.monotonic()
        bp = read_blueprint(blueprint_path)
        app = name or bp.name
        catalogue = load_catalogue(provider_name)
        problems = check_fit(bp, catalogue)
        if problems:
            raise BlueprintError(problems)
        plan = make_plan(bp, catalogue)
        provider = get_provider(provider_name, self.paths)
        provider.preflight()
        check_files(bp)
        self.emit(Event("plan", f"{len(bp.vms)} VMs on {len(plan.placement.hosts)} hosts", done=True))
        text = Path(blueprint_path).read_text(encoding="utf-8")
        with self.state.lock(app, "publish"):
            existing = self.state.app(app)
            if existing and existing.provider != provider_name:
                raise StateError(f"app {app!r} already runs on provider {existing.provider}",
                                 hint="destroy it first, or publish under another --name")
            how = self._transport_kind(app, provider, transport)
            if resume and existing is None:  # a re-run keeps the VMs that have not started yet
                resumes.record(self.paths, app, resume)
            self.state.put_app(app, provider_name, "publishing", os.path.abspath(blueprint_path), text, plan.to_dict())
            result = self._converge(app, bp, plan, provider, running=None, deadline=started + timeout,
                                    options={"image": host_image, "ssh_from": ssh_from, "transport": how})
            self.state.set_app_status(app, "running")
        if wait:
            result.ready_s = self.wait_ready(app, timeout - (time.monotonic() - started))
        return result

    def _transport_kind(self, app: str, provider: Provider, requested: str | None) -> str:
        """The transport for the app's hosts: as requested, else what the app's hosts already
        use, else the provider's default. An app's hosts are all reached the same way."""
        offered = tuple(getattr(provider, "transports", ("ssh",)))
        used = {(r.extra.get("provision") or {}).get("transport") or offered[0]
                for r in self.state.hosts(app) if r.ref}
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

    def publish_snapshot(self, snapshot: str, name: str | None = None, provider_name: str = "local",
                         store_url: str | None = None, wait: bool = False,
                         timeout: float = 300.0, transport: str | None = None,
                         host_image: str | None = None, ssh_from: str | None = None) -> PublishResult:
        """Publish a snapshot as an app (by default named after it). Every layer is fetched and
        its sha256 checked before anything is created: a missing or corrupted layer is a
        StoreError and nothing starts."""
        from .snapshot import restore_snapshot, restored_blueprint

        app = name or snapshot
        existing = self.state.app(app)
        # a re-run of this very publish continues it; any other app of that name is not replaced
        # (publishing over it said "nothing to do" and left its record pointing at the snapshot)
        ours = os.path.abspath(restored_blueprint(self.paths, snapshot))
        if existing is not None and existing.blueprint_path != ours:
            raise StateError(f"app {app!r} already exists (from {existing.blueprint_path or 'another blueprint'}); "
                             f"snapshot {snapshot} is not published over it",
                             hint=f"publish it under another --name, or `ravel destroy {app}` first")
        catalogue = load_catalogue(provider_name)

        def fits(bp: Blueprint) -> Blueprint:  # before a layer is fetched: a snapshot can be large
            bp = portable(bp, catalogue, self.emit)
            problems = check_fit(bp, catalogue)
            if problems:
                raise BlueprintError(problems)
            return bp

        started = time.monotonic()
        got = restore_snapshot(self.paths, snapshot, store_url, emit=self.emit, check=fits)
        resume = {vm: Resume(str(state), got.machines.get(vm, ())) for vm, state in got.memory.items()}
        return self.publish(str(got.blueprint), name=name or snapshot, provider_name=provider_name, wait=wait,
                            timeout=timeout - (time.monotonic() - started), transport=transport,
                            host_image=host_image, ssh_from=ssh_from, resume=resume)

    def _converge(self, app: str, bp: Blueprint, plan: Plan, provider: Provider,
                  running: Mapping[str, bool] | None, deadline: float | None = None,
                  options: Mapping[str, str | None] | None = None) -> PublishResult:
        vnis = self.state.vnis(app, [n.name for n in bp.networks])
        planned = [h.name for h in plan.placement.hosts]
        hosts = provision(self, app, plan, provider, deadline or time.monotonic() + DEFAULT_PROVISION_S,
                                options or {})
        net = plan_network(bp, app, vnis)
        # the accelerator each host's probe settled (_provision), not the plan's guess
        accels = {r.name: r.accel for r in self.state.hosts(app)}
        sites = {
            name: HostSite(name, h.address, h.device, h.run_root,
                           h.extra.get("data_dir") or str(self.paths.app_data(app) / name),
                           accels.get(name) or "tcg",  # type: ignore[arg-type]
                           tuple(h.extra.get("guest_deny") or ()))
            for name, h in hosts.items()
        }
        pending = resumes.pending(self.paths, app)  # VMs that resume from a memory state
        docs = desired_states(bp, app, plan.placement, net, sites, running,
                              {vm: r.state for vm, r in pending.items()})
        resumes.check_machines(pending, docs)
        for name, site in sites.items():
            if not hosts[name].extra.get("data_dir"):  # a host's own data_dir lives on that host
                Path(site.data_dir).mkdir(parents=True, exist_ok=True, mode=0o700)
        moves.move_vms(self, app, provider, hosts, docs, deadline)

        def apply(host: str) -> dict[str, Any]:
            runtime = self._runtime(provider, hosts[host], deadline)
            t = self._transport(provider, hosts[host])
            if not getattr(t, "local", False):
                # the host cannot read this machine's files: send kernels and images first
                images = posixpath.join(posixpath.dirname(hosts[host].run_root.rstrip("/")), "images")
                docs[host] = ship(t, docs[host], images,
                                  lambda msg: self.emit(Event("vms", f"{host}: {msg}", host=host)))
            report = runtime.apply(docs[host])
            resumes.started(self.paths, app, [vm for vm, v in (report.get("vms") or {}).items()
                                              if v.get("running")])
            rec = next(r for r in self.state.hosts(app) if r.name == host)
            self.state.update_host(app, host, extra={**rec.extra, "desired": docs[host]})
            n = len(report.get("actions", []))
            self.emit(Event("vms", f"{host}: {n} change{'s' if n != 1 else ''}" if n else f"{host}: up to date",
                            host=host, done=True))
            return report

        reports = parallel(apply, planned)
        changed = sum(len(r.get("actions", [])) for r in reports)
        changed += teardown.retire_hosts(self, app, provider, set(planned))
        exposed = exposure.expose(self.state, app, provider, hosts, bp, plan.placement, net, self.emit)
        for vm in bp.vms:
            host = plan.placement.vm_host[vm.name]
            nics = net.of_vm(vm.name)
            site = sites[host]
            self.state.put_vm(app, vm.name, host, "running" if (running or {}).get(vm.name, True) else "stopped", {
                "services": exposed.get(vm.name, []),
                "ips": [str(n.ip) if n.ip else None for n in nics],
                "macs": [n.mac for n in nics],
                "networks": [n.network for n in nics],
                "console": f"{site.run_dir}/{vm.name}.serial",
                "log": f"{site.run_dir}/{vm.name}.log",
                "vnc": f"{site.run_dir}/{vm.name}.vnc",
                "accel": site.accel,
            })
        for rec in self.state.vms(app):
            if rec.name not in {vm.name for vm in bp.vms}:
                self.state.delete_vm(app, rec.name)
        return PublishResult(app, plan, changed, self.status(app))


    # -- stop / start ------------------------------------------------------------------------
    def set_running(self, app: str, vms: list[str] | None, running: bool) -> int:
        rec = self.state.require_app(app)
        provider = get_provider(rec.provider, self.paths)
        with self.state.lock(app, "stop" if not running else "start"):
            known = {v.name: v for v in self.state.vms(app)}
            for vm in vms or []:
                if vm not in known:
                    raise StateError(f"app {app!r} has no VM {vm!r} (VMs: {', '.join(known)})")
            targets = set(vms or known)
            flags = {name: (running if name in targets else v.state == "running") for name, v in known.items()}
            bp = self._stored_blueprint(app)
            catalogue = load_catalogue(rec.provider)
            plan = make_plan(bp, catalogue)
            result = self._converge(app, bp, plan, provider, flags)
            self.state.set_app_status(app, "running" if any(flags.values()) else "stopped")
            return result.changed


    # -- the other stages, kept as methods so every command goes through one Lab -------------
    def wait_ready(self, app: str, timeout: float) -> float:
        return observe.wait_ready(self, app, timeout)

    def status(self, app: str) -> list[VmStatus]:
        return observe.status(self, app)

    def console(self, app: str, vm: str, on_attached: Callable[[], None] = lambda: None) -> None:
        vm_access.console(self, app, vm, on_attached)

    def console_output(self, app: str, vm: str, follow: bool = False,
                       poll_s: float = 0.5, max_s: float | None = None) -> Iterator[bytes]:
        return vm_access.console_output(self, app, vm, follow, poll_s, max_s)

    def destroy(self, app: str, provider_name: str | None = None) -> int:
        return teardown.destroy(self, app, provider_name)


def open_state(paths: Paths) -> State:
    try:
        return State(paths.state)
    except (OSError, sqlite3.Error) as exc:
        raise StateError(f"cannot open the state in {paths.state}: {exc}",
                         hint="set RAVEL_HOME to a directory you can write") from None


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
