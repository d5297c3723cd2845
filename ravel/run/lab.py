"""The pipelines that join the pure core to providers, transports and state:
publish, stop/start, status, destroy. Each is idempotent and safe to re-run after interruption.
"""

from __future__ import annotations

import os
import posixpath
import shutil
import sqlite3
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Iterator, Any, Callable, Iterable, Mapping, TypeVar

from .. import keys
from ..errors import BlueprintError, ProviderError, RavelError, StateError, TransportError
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
from ..state import State, VmRecord
from ..transport.base import Transport
from ..transport.hostctl import HostRuntime, bundle, install
from .accel import choose_accel, probe_is_current
from .blueprints import read_blueprint
from . import exposure
from .events import Emit, Event, quiet
from .console import attach, read_log, relay
from .preflight import check_files
from .ship import ship
from .provision import make_hosts, reach_hosts

T = TypeVar("T")
READY_MARKERS = ("RAVEL-READY", "login:")
MAX_PARALLEL_HOSTS = 16
DEFAULT_PROVISION_S = 600.0  # stop/start: the bound on making and reaching hosts again
REACH_S = 120.0  # without a publish deadline: how long a host may take to answer at all
DESTROY_REACH_S = 30.0  # destroy: after this, the provider removes the host without its help
STATUS_S = 10.0  # status: how long to wait for a host's observation


@dataclass
class VmStatus:
    name: str
    host: str
    state: str  # running, stopped, missing; unreachable (the host did not answer)
    accel: str
    ips: list[str]
    macs: list[str]
    console: str
    log: str
    pid: int | None = None
    services: list[str] = field(default_factory=list)  # exposed: "127.0.0.1:40123->80/tcp"


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
                ssh_from: str | None = None, transport: str | None = None) -> PublishResult:
        """`timeout` bounds the whole publish, waiting for hosts to answer included;
        `transport` is how hosts are reached (provider's default, or what the app already uses)."""
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
            how = self._transport_kind(app, provider, transport)
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
                         timeout: float = 300.0, transport: str | None = None) -> PublishResult:
        """Publish a snapshot as an app (by default named after it). Every layer is fetched and
        its sha256 checked before anything is created: a missing or corrupted layer is a
        StoreError and nothing starts."""
        from .snapshot import restore

        started = time.monotonic()
        path = restore(self.paths, snapshot, store_url, emit=self.emit)
        return self.publish(str(path), name=name or snapshot, provider_name=provider_name, wait=wait,
                            timeout=timeout - (time.monotonic() - started), transport=transport)

    def _converge(self, app: str, bp: Blueprint, plan: Plan, provider: Provider,
                  running: Mapping[str, bool] | None, deadline: float | None = None,
                  options: Mapping[str, str | None] | None = None) -> PublishResult:
        vnis = self.state.vnis(app, [n.name for n in bp.networks])
        planned = [h.name for h in plan.placement.hosts]
        hosts = self._provision(app, plan, provider, deadline or time.monotonic() + DEFAULT_PROVISION_S,
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
        docs = desired_states(bp, app, plan.placement, net, sites, running)
        for name, site in sites.items():
            if not hosts[name].extra.get("data_dir"):  # a host's own data_dir lives on that host
                Path(site.data_dir).mkdir(parents=True, exist_ok=True, mode=0o700)
        self._move_vms(app, provider, hosts, docs, deadline)

        def apply(host: str) -> dict[str, Any]:
            runtime = self._runtime(provider, hosts[host], deadline)
            t = self._transport(provider, hosts[host])
            if not getattr(t, "local", False):
                # the host cannot read this machine's files: send kernels and images first
                images = posixpath.join(posixpath.dirname(hosts[host].run_root.rstrip("/")), "images")
                docs[host] = ship(t, docs[host], images,
                                  lambda msg: self.emit(Event("vms", f"{host}: {msg}", host=host)))
            report = runtime.apply(docs[host])
            rec = next(r for r in self.state.hosts(app) if r.name == host)
            self.state.update_host(app, host, extra={**rec.extra, "desired": docs[host]})
            n = len(report.get("actions", []))
            self.emit(Event("vms", f"{host}: {n} change{'s' if n != 1 else ''}" if n else f"{host}: up to date",
                            host=host, done=True))
            return report

        reports = _parallel(apply, planned)
        changed = sum(len(r.get("actions", [])) for r in reports)
        changed += self._retire_hosts(app, provider, set(planned))
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

    def _provision(self, app: str, plan: Plan, provider: Provider, deadline: float,
                   options: Mapping[str, str | None]) -> dict[str, Host]:
        """Make every host (each recorded in the state the moment it exists), then wait, bounded
        by `deadline`, until each answers and has reported ready. Both stages are resumable."""
        planned = [h.name for h in plan.placement.hosts]
        ids = self.state.host_ids(app, planned)
        types = {h.name: h for h in plan.placement.hosts}
        extras = {r.name: dict(r.extra) for r in self.state.hosts(app)}
        specs = []
        for name in planned:
            made = extras[name].get("provision") or {}
            # recorded before the provider is asked, so a resumed publish sends the same token
            # (ClientToken / request_id) and the cloud recognises a create it already did
            prov = {"token": made.get("token") or uuid.uuid4().hex,
                    "image": options.get("image") or made.get("image"),
                    "ssh_from": options.get("ssh_from") or made.get("ssh_from"),
                    "transport": options.get("transport") or made.get("transport")}
            if prov != made:
                extras[name]["provision"] = prov
                self.state.update_host(app, name, extra=extras[name])
            specs.append(HostSpec(app, name, ids[name], types[name].type.name, image=prov["image"],
                                  ssh_from=prov["ssh_from"], token=prov["token"], deadline=deadline,
                                  transport=prov["transport"] or ""))

        def made_one(spec: HostSpec, h: Host) -> None:
            extras[spec.name]["host"] = h.extra
            self.state.update_host(app, spec.name, type=spec.type, ref=h.ref, address=h.address,
                                   status="provisioned", extra=extras[spec.name])
            if h.extra.get("ready_file"):
                self.emit(Event("hosts", f"{spec.name} created ({h.ref}, {h.address}); waiting for it to boot",
                                host=spec.name))

        hosts = make_hosts(provider, specs, made_one)

        def ready_one(h: Host, report: dict[str, Any]) -> None:
            if report:
                extras[h.name]["ready"] = report
            # the host answers over its transport (SSH retried while it boots, bounded by the
            # deadline) and holds this exact runtime before it counts as up: every host does
            # before anything is applied anywhere
            rt = self._runtime(provider, h, deadline)
            probed = not probe_is_current(extras[h.name].get("facts"), h.ref)
            if probed:  # once per host: a re-publish asks nothing
                extras[h.name]["facts"] = {**rt.facts(), "ref": h.ref}
            choice = choose_accel(types[h.name].accel, extras[h.name]["facts"])
            if probed and choice.note:
                self.emit(Event("hosts", f"{h.name}: {choice.note}", host=h.name))
            self.state.update_host(app, h.name, status="up", accel=choice.accel, extra=extras[h.name])
            self.emit(Event("hosts", f"{h.name} ready ({h.ref}, {h.address})", host=h.name, done=True))

        reports = reach_hosts(hosts, lambda h: self._transport(provider, h), deadline, ready_one)
        # the underlay device is what the host itself reported (ens5, eth0...), where it did
        return {name: replace(h, device=reports[name].get("underlay_device") or h.device)
                for name, h in hosts.items()}

    def _move_vms(self, app: str, provider: Provider, hosts: Mapping[str, Host],
                  docs: Mapping[str, dict[str, Any]], deadline: float | None = None) -> None:
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
                self._runtime(provider, hosts[rec.name], deadline).apply(stopped)
            elif rec.ref:
                host = Host(app, rec.name, rec.ref, rec.address or "", old["underlay"]["device"], old["run_dir"],
                            rec.extra.get("host") or {})
                self._runtime(provider, host, deadline).apply(stopped)
            for vm in moving:
                target = new_home[vm["name"]][1]
                for src, dst in zip(vm["disks"], target["disks"]):
                    provider.move_file(rec.name, src["path"], new_home[vm["name"]][0], dst["path"])
                self.emit(Event("vms", f"{vm['name']} moves {rec.name} -> {new_home[vm['name']][0]}",
                                vm=vm["name"], done=True))

    def _retire_hosts(self, app: str, provider: Provider, keep: set[str]) -> int:
        gone = [r for r in self.state.hosts(app) if r.name not in keep]
        for r in gone:
            self._destroy_host(app, provider, r.name, r.host_id, r.extra.get("desired"), r.ref, r.address,
                               r.extra.get("host"))
            self.state.delete_host(app, r.name)
            self.emit(Event("hosts", f"{r.name} removed (no longer in the plan)", host=r.name, done=True))
        return len(gone)

    def _destroy_host(self, app: str, provider: Provider, name: str, host_id: int,
                      desired: dict[str, Any] | None, ref: str | None, address: str | None,
                      extra: dict[str, Any] | None = None) -> None:
        if desired is not None and ref:
            # the runtime stops QEMU through QMP and removes its files; the provider's delete
            # below removes whatever the runtime could not reach
            try:
                host = Host(app, name, ref, address or "", desired["underlay"]["device"], desired["run_dir"],
                            extra or {})
                self._runtime(provider, host, reach_s=DESTROY_REACH_S).destroy(desired)
            except RavelError:
                pass
        self._runtimes.pop((app, name), None)
        t = self._transports.pop((app, name), None)
        if t is not None:
            t.close()
        provider.delete_host(app, name, host_id)

    # -- readiness ---------------------------------------------------------------------------
    def wait_ready(self, app: str, timeout: float) -> float:
        """Wait until every running VM's console shows a ready line; bounded by `timeout`.
        Console logs are read here on hosts that share this machine's files, else through the
        host's transport."""
        start = time.monotonic()
        deadline = start + max(timeout, 1.0)
        remote = {name: self._transport(provider, host)
                  for name, (host, _, provider) in self._remote_hosts(app).items()}
        pending: dict[str, dict[str, str]] = {}  # host -> VM -> console log
        for v in self.status(app):
            if v.state == "running":
                pending.setdefault(v.host, {})[v.name] = v.log
        while pending and time.monotonic() < deadline:
            for host, logs in list(pending.items()):
                for vm in _ready_vms(remote.get(host), logs, deadline):
                    del logs[vm]
                    self.emit(Event("wait", f"{vm} ready", vm=vm, done=True))
                if not logs:
                    del pending[host]
            if pending:
                time.sleep(0.5 if remote else 0.1)
        if pending:
            late = sorted(vm for logs in pending.values() for vm in logs)
            raise StateError(f"VMs not ready after {timeout:.0f} s: {', '.join(late)}",
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
        """Each VM as it is: pid files where the host shares this machine's files, else what the
        host runtime observes through the host's transport ("unreachable" if it does not answer)."""
        self.state.require_app(app)
        hosts = self._remote_hosts(app)

        def observe(name: str) -> dict[str, Any] | None:
            host, desired, provider = hosts[name]
            try:
                return self._runtime(provider, host, reach_s=STATUS_S).observe(desired, timeout=STATUS_S)["vms"]
            except (RavelError, KeyError, TypeError):
                return None

        observed = dict(zip(hosts, _parallel(observe, list(hosts))))
        out = []
        for v in self.state.vms(app):
            d = v.detail
            state = v.state
            if v.host in observed:
                seen = observed[v.host]
                vm = (seen or {}).get(v.name) or {}
                pid = vm.get("pid") if vm.get("running") else None
                if seen is None and state == "running":
                    state = "unreachable"
            else:
                pid = _live_pid(d["console"].rsplit(".", 1)[0] + ".pid")
            if state == "running" and pid is None:
                state = "missing"
            out.append(VmStatus(v.name, v.host or "", state, d.get("accel", ""), [ip for ip in d["ips"] if ip],
                                d["macs"], d["console"], d["log"], pid, exposure.labels(d)))
        return out

    def _remote_hosts(self, app: str) -> dict[str, tuple[Host, dict[str, Any], Provider]]:
        """The app's applied hosts that do not share this machine's files: name -> (host, its
        desired document, provider)."""
        out: dict[str, tuple[Host, dict[str, Any], Provider]] = {}
        provider: Provider | None = None
        for r in self.state.hosts(app):
            desired = r.extra.get("desired")
            if not r.ref or not desired:
                continue
            host = Host(app, r.name, r.ref, r.address or "", desired["underlay"]["device"], desired["run_dir"],
                        r.extra.get("host") or {})
            provider = provider or get_provider(self.state.require_app(app).provider, self.paths)
            if not getattr(self._transport(provider, host), "local", False):
                out[r.name] = (host, desired, provider)
        return out

    # -- console ---------------------------------------------------------------------------
    def _vm_record(self, app: str, vm: str) -> VmRecord:
        """Where a VM lives, from the state alone: reaching its console or log needs no
        observation of every host."""
        self.state.require_app(app)
        vms = self.state.vms(app)
        for v in vms:
            if v.name == vm:
                return v
        raise StateError(f"app {app!r} has no VM {vm!r} (VMs: {', '.join(v.name for v in vms)})")

    def console(self, app: str, vm: str, on_attached: Callable[[], None] = lambda: None) -> None:
        """Attach the terminal to a VM's serial console, directly or through the host's
        transport when the host does not share this machine's files."""
        target = self._vm_record(app, vm)
        remote = self._remote_hosts(app).get(target.host or "")
        if remote is None:
            attach(target.detail["console"], vm, on_attached=on_attached)
            return
        host, _, provider = remote
        runtime = self._runtime(provider, host)
        t = self._transport(provider, host)
        stream = getattr(t, "stream", None)
        if stream is None:
            raise StateError(f"the console of {vm} cannot be reached over this host's transport")
        chan = stream([runtime.python, runtime.pyz, "console", target.detail["console"]])
        on_attached()
        try:
            relay(chan)
        finally:
            chan.close()

    # -- console output --------------------------------------------------------------------
    def console_output(self, app: str, vm: str, follow: bool = False,
                       poll_s: float = 0.5, max_s: float | None = None) -> Iterator[bytes]:
        """A VM's console log so far, then (with `follow`) what arrives; read through the
        host's transport when the host does not share this machine's files."""
        target = self._vm_record(app, vm)
        log = target.detail["log"]
        remote = self._remote_hosts(app).get(target.host or "")
        if remote is None:
            yield from read_log(log, vm, follow=follow, max_s=max_s)
            return
        host, _, provider = remote
        t = self._transport(provider, host)
        offset = 0
        deadline = None if max_s is None else time.monotonic() + max_s
        while True:
            r = t.run(["tail", "-c", f"+{offset + 1}", log], check=False, timeout=60)
            if r.rc != 0 and offset == 0:
                raise StateError(f"{vm} has no console output yet")
            chunk = r.stdout.encode()
            if chunk:
                offset += len(chunk)
                yield chunk
            if not follow or (deadline is not None and time.monotonic() > deadline):
                return
            time.sleep(poll_s)

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
                    self._destroy_host(app, provider, name, r.host_id, r.extra.get("desired"), r.ref, r.address,
                                       r.extra.get("host"))
                else:
                    provider.delete_host(app, name, 0)
                self.emit(Event("destroy", f"{name} removed", host=name, done=True))

            exposure.unexpose(self.state, app, provider)  # before the hosts their relays lead into
            _parallel(remove, list(hosts) + leftovers)
            shutil.rmtree(self.paths.app_run(app), ignore_errors=True)
            shutil.rmtree(self.paths.app_data(app), ignore_errors=True)
            shutil.rmtree(keys.directory(self.paths.state) / "hostkeys" / app, ignore_errors=True)
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


def _ready_vms(t: Transport | None, logs: Mapping[str, str], deadline: float) -> list[str]:
    """VMs whose console log shows a ready marker: read here (t None), or on the host."""
    if t is None:
        found = []
        for vm, log in logs.items():
            try:
                with open(log, "rb") as fh:
                    text = fh.read().decode(errors="replace")
            except FileNotFoundError:
                continue
            if any(m in text for m in READY_MARKERS):
                found.append(vm)
        return found
    patterns = [arg for m in READY_MARKERS for arg in ("-e", m)]
    try:
        # -l: the names of the logs that match; a log not written yet is not an error here
        result = t.run(["grep", "-l", "-F", *patterns, "--", *logs.values()],
                       timeout=max(1.0, min(10.0, deadline - time.monotonic())), check=False)
    except TransportError:
        return []  # not answering right now: the overall deadline decides
    matched = set(result.stdout.splitlines())
    return [vm for vm, log in logs.items() if log in matched]


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
