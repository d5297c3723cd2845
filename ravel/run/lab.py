"""The pipelines that join the pure core to providers, transports and state:
publish, stop/start, status, destroy. Each is idempotent and safe to re-run after interruption.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, TypeVar

from ..errors import BlueprintError, RavelError, StateError
from ..model.blueprint import Blueprint
from ..model.resolve import load_blueprint
from ..paths import Paths
from ..plan.catalogue import load_catalogue
from ..plan.fit import check_fit
from ..plan.network import plan_network
from ..plan.plan import Plan, make_plan
from ..providers import get_provider
from ..providers.base import Host, HostSpec, Provider
from ..render.host_state import HostSite, desired_states
from ..state import State
from ..transport.hostctl import HostRuntime, bundle
from .blueprints import read_blueprint
from .events import Emit, Event, quiet
from .preflight import check_files

T = TypeVar("T")
READY_MARKERS = ("RAVEL-READY", "login:")
MAX_PARALLEL_HOSTS = 16


@dataclass
class VmStatus:
    name: str
    host: str
    state: str  # running, stopped, missing
    accel: str
    ips: list[str]
    macs: list[str]
    console: str
    log: str
    pid: int | None = None


@dataclass
class PublishResult:
    app: str
    plan: Plan
    changed: int  # number of actions the hosts performed
    vms: list[VmStatus] = field(default_factory=list)
    ready_s: float | None = None


def _parallel(fn: Callable[[Any], T], items: Iterable[Any]) -> list[T]:
    items = list(items)
    if len(items) <= 1:
        return [fn(i) for i in items]
    with ThreadPoolExecutor(max_workers=min(MAX_PARALLEL_HOSTS, len(items))) as pool:
        return list(pool.map(fn, items))


class Lab:
    """One ravel set-up on this machine: its state, paths and providers."""

    def __init__(self, paths: Paths, emit: Emit = quiet) -> None:
        self.paths = paths
        self.emit = emit
        self._state: State | None = None

    @property
    def state(self) -> State:
        # opened on first use, so checks that need no state (root, QEMU) come first
        if self._state is None:
            self._state = open_state(self.paths)
        return self._state

    def close(self) -> None:
        if self._state is not None:
            self._state.close()

    # -- helpers -----------------------------------------------------------------------------
    def _runtime(self, provider: Provider, host: Host) -> HostRuntime:
        pyz = bundle(self.paths.cache)
        return HostRuntime(provider.transport(host), str(pyz))

    def _stored_blueprint(self, app: str) -> Blueprint:
        rec = self.state.require_app(app)
        base = os.path.dirname(rec.blueprint_path) if rec.blueprint_path else None
        return load_blueprint(rec.blueprint_text or "", rec.blueprint_path or app, base)

    # -- publish -----------------------------------------------------------------------------
    def publish(self, blueprint_path: str, name: str | None = None, provider_name: str = "local",
                wait: bool = False, timeout: float = 300.0) -> PublishResult:
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
                                 hint=f"destroy it first, or publish under another --name")
            self.state.put_app(app, provider_name, "publishing", os.path.abspath(blueprint_path), text, plan.to_dict())
            result = self._converge(app, bp, plan, provider, running=None)
            self.state.set_app_status(app, "running")
        if wait:
            result.ready_s = self.wait_ready(app, timeout - (time.monotonic() - started))
        return result

    def _converge(self, app: str, bp: Blueprint, plan: Plan, provider: Provider,
                  running: Mapping[str, bool] | None) -> PublishResult:
        vnis = self.state.vnis(app, [n.name for n in bp.networks])
        planned = [h.name for h in plan.placement.hosts]
        ids = self.state.host_ids(app, planned)
        types = {h.name: h for h in plan.placement.hosts}

        def make(host: str) -> Host:
            h = provider.ensure_host(HostSpec(app, host, ids[host], types[host].type.name))
            self.state.update_host(app, host, type=types[host].type.name, ref=h.ref, address=h.address,
                                   accel=types[host].accel, status="up")
            self.emit(Event("hosts", f"{host} ready ({h.ref}, {h.address})", host=host, done=True))
            return h

        hosts = dict(zip(planned, _parallel(make, planned)))
        net = plan_network(bp, app, vnis)
        sites = {
            name: HostSite(name, h.address, h.device, h.run_root, str(self.paths.app_data(app) / name),
                           types[name].accel)  # type: ignore[arg-type]
            for name, h in hosts.items()
        }
        docs = desired_states(bp, app, plan.placement, net, sites, running)
        for site in sites.values():
            Path(site.data_dir).mkdir(parents=True, exist_ok=True, mode=0o700)
        self._move_vms(app, provider, hosts, docs)

        def apply(host: str) -> dict[str, Any]:
            report = self._runtime(provider, hosts[host]).apply(docs[host])
            rec = next(r for r in self.state.hosts(app) if r.name == host)
            self.state.update_host(app, host, extra={**rec.extra, "desired": docs[host]})
            n = len(report.get("actions", []))
            self.emit(Event("vms", f"{host}: {n} change{'s' if n != 1 else ''}" if n else f"{host}: up to date",
                            host=host, done=True))
            return report

        reports = _parallel(apply, planned)
        changed = sum(len(r.get("actions", [])) for r in reports)
        changed += self._retire_hosts(app, provider, set(planned))
        for vm in bp.vms:
            host = plan.placement.vm_host[vm.name]
            nics = net.of_vm(vm.name)
            site = sites[host]
            self.state.put_vm(app, vm.name, host, "running" if (running or {}).get(vm.name, True) else "stopped", {
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

    def _move_vms(self, app: str, provider: Provider, hosts: Mapping[str, Host],
                  docs: Mapping[str, dict[str, Any]]) -> None:
        """VMs the new plan puts on another host: stop them where they ran, then carry their
        disks over, so the old host's clean-up finds nothing of theirs to delete and the new
        host boots them on the disks they had."""
        new_home = {vm["name"]: (host, vm) for host, doc in docs.items() for vm in doc["vms"]}
        for rec in self.state.hosts(app):
            old = rec.extra.get("desired")
            if not old:
                continue
            moving = [vm for vm in old["vms"] if vm["name"] in new_home and new_home[vm["name"]][0] != rec.name]
            if not moving:
                continue
            names = {vm["name"] for vm in moving}
            stopped = {**old, "vms": [{**vm, "running": False} if vm["name"] in names else vm for vm in old["vms"]]}
            if rec.name in hosts:
                self._runtime(provider, hosts[rec.name]).apply(stopped)
            elif rec.ref:
                host = Host(app, rec.name, rec.ref, rec.address or "", old["underlay"]["device"], old["run_dir"])
                self._runtime(provider, host).apply(stopped)
            for vm in moving:
                target = new_home[vm["name"]][1]
                for src, dst in zip(vm["disks"], target["disks"]):
                    provider.move_file(rec.name, src["path"], new_home[vm["name"]][0], dst["path"])
                self.emit(Event("vms", f"{vm['name']} moves {rec.name} -> {new_home[vm['name']][0]}",
                                vm=vm["name"], done=True))

    def _retire_hosts(self, app: str, provider: Provider, keep: set[str]) -> int:
        gone = [r for r in self.state.hosts(app) if r.name not in keep]
        for r in gone:
            self._destroy_host(app, provider, r.name, r.host_id, r.extra.get("desired"), r.ref, r.address)
            self.state.delete_host(app, r.name)
            self.emit(Event("hosts", f"{r.name} removed (no longer in the plan)", host=r.name, done=True))
        return len(gone)

    def _destroy_host(self, app: str, provider: Provider, name: str, host_id: int,
                      desired: dict[str, Any] | None, ref: str | None, address: str | None) -> None:
        if desired is not None and ref:
            # the runtime stops QEMU through QMP and removes its files; the provider's delete
            # below removes whatever the runtime could not reach
            try:
                host = Host(app, name, ref, address or "", desired["underlay"]["device"], desired["run_dir"])
                self._runtime(provider, host).destroy(desired)
            except RavelError:
                pass
        provider.delete_host(app, name, host_id)

    # -- readiness ---------------------------------------------------------------------------
    def wait_ready(self, app: str, timeout: float) -> float:
        """Wait until every running VM's console shows a ready line; bounded by `timeout`."""
        start = time.monotonic()
        pending = {v.name: v.log for v in self.status(app) if v.state == "running"}
        deadline = start + max(timeout, 1.0)
        while pending and time.monotonic() < deadline:
            for vm, log in list(pending.items()):
                try:
                    with open(log, "rb") as fh:
                        text = fh.read().decode(errors="replace")
                except FileNotFoundError:
                    continue
                if any(m in text for m in READY_MARKERS):
                    del pending[vm]
                    self.emit(Event("wait", f"{vm} ready", vm=vm, done=True))
            time.sleep(0.1)
        if pending:
            raise StateError(f"VMs not ready after {timeout:.0f} s: {', '.join(sorted(pending))}",
                             hint=f"see `ravel logs {app} VM` for their consoles")
        return time.monotonic() - start

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

    # -- status ------------------------------------------------------------------------------
    def status(self, app: str) -> list[VmStatus]:
        self.state.require_app(app)
        out = []
        for v in self.state.vms(app):
            d = v.detail
            pid = _live_pid(d["console"].rsplit(".", 1)[0] + ".pid")
            state = v.state
            if state == "running" and pid is None:
                state = "missing"
            out.append(VmStatus(v.name, v.host or "", state, d.get("accel", ""), [ip for ip in d["ips"] if ip],
                                d["macs"], d["console"], d["log"], pid))
        return out

    # -- destroy -----------------------------------------------------------------------------
    def destroy(self, app: str, provider_name: str | None = None) -> int:
        rec = self.state.app(app)
        provider = get_provider(rec.provider if rec else (provider_name or "local"), self.paths)
        with self.state.lock(app, "destroy"):
            hosts = {r.name: r for r in self.state.hosts(app)}
            leftovers = [h for h in provider.leftover_hosts(app) if h not in hosts]
            if rec is None and not hosts and not leftovers and not self.paths.app_data(app).exists():
                known = ", ".join(a.name for a in self.state.apps()) or "none"
                raise StateError(f"no app named {app!r} (apps: {known})")

            def remove(name: str) -> None:
                r = hosts.get(name)
                if r is not None:
                    self._destroy_host(app, provider, name, r.host_id, r.extra.get("desired"), r.ref, r.address)
                else:
                    provider.delete_host(app, name, 0)
                self.emit(Event("destroy", f"{name} removed", host=name, done=True))

            _parallel(remove, list(hosts) + leftovers)
            shutil.rmtree(self.paths.app_run(app), ignore_errors=True)
            shutil.rmtree(self.paths.app_data(app), ignore_errors=True)
            self.state.delete_app(app)
            provider.cleanup()
        try:
            (self.state.dir / "locks" / f"{app}.lock").unlink()
        except FileNotFoundError:
            pass
        return len(hosts) + len(leftovers)


def open_state(paths: Paths) -> State:
    try:
        return State(paths.state)
    except (OSError, sqlite3.Error) as exc:
        raise StateError(f"cannot open the state in {paths.state}: {exc}",
                         hint="set RAVEL_HOME to a directory you can write") from None


def _live_pid(pidfile: str) -> int | None:
    try:
        pid = int(Path(pidfile).read_text().strip())
    except (FileNotFoundError, ValueError):
        return None
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except FileNotFoundError:
        return None
    return pid if b"qemu" in cmdline else None
