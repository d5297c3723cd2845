"""`ravel doctor --repair-state`: a state that is damaged, emptied or lost, rebuilt from what
survives, best source first:

1. the damaged database itself, for every app whose rows still read (it is moved aside first,
   as `state.db.damaged-STAMP`, never deleted);
2. each app's backup (state_backup.py), when newer or when the database lost the app;
3. the hosts: on a provider that can list them (the local one: namespaces `rv-APP-HOST` on
   this set-up's underlay, their address giving the host id and their VXLAN devices the VNIs),
   run directories (`<vm>.argv`: the VMs, their console logs, whether QEMU still runs) and data
   directories (`<host>/<vm>-disk0.qcow2`). Hosts a restored app lacks are added to it; an app
   known only from the hosts is recorded as "recovered", so `ravel status`, `ravel destroy`
   and a new `ravel publish FILE --name APP` work on it again.

Nothing is removed from any host. Every step says what it did, in one line.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import StateDamaged, StateError
from ..providers import get_provider
from ..providers.base import FoundHost, HostFinder
from ..state import EXPORT_VERSION, State
from . import health, state_backup
from .sessions import Context

RECOVERED = "recovered"  # the status of an app known only from its hosts


@dataclass
class Repair:
    lines: list[str] = field(default_factory=list)
    moved_aside: Path | None = None
    apps: list[str] = field(default_factory=list)  # every app the state knows afterwards

    def say(self, line: str) -> None:
        self.lines.append(line)


def repair_state(ctx: Context) -> Repair:
    out = Repair()
    state = ctx.state
    provider = get_provider("local", ctx.paths)
    found = provider.found_hosts() if isinstance(provider, HostFinder) else []
    on_disk = _apps_on_disk(ctx)
    backups = state_backup.backed_up(state)
    candidates = sorted(set(backups) | {h.app for h in found} | set(on_disk))
    for app in candidates:
        holder = health.lock_holder(state.dir, app)
        if holder:
            raise StateError(f"app {app!r} is busy (pid {holder} holds its lock)",
                             hint="repair the state once no other ravel command runs")

    salvaged: dict[str, dict[str, Any]] = {}
    problems = state.integrity()
    readable = not problems and _reads(state)
    if not readable:
        salvaged = _salvage(state, candidates)
        state.close()
        out.moved_aside = _move_aside(state.path)
        out.say(f"the damaged database ({problems[0] if problems else 'unreadable'}) was moved to "
                f"{out.moved_aside}; {len(salvaged)} app{'s' if len(salvaged) != 1 else ''} still read from it")
        ctx.reset_state()
        state = ctx.state
    known = {a.name for a in state.apps()}
    if readable:
        out.say(f"the database {state.path} is sound ({len(known)} app{'s' if len(known) != 1 else ''})")

    for app in sorted((set(backups) | set(salvaged)) - known):
        doc, source = _newest(salvaged.get(app), state_backup.load(state, app))
        if doc is None:
            out.say(f"{app}: its backup does not parse; left to the hosts")
            continue
        try:
            state.import_app(doc)
        except StateError as exc:
            out.say(f"{app}: not restored: {exc.message}")
            continue
        known.add(app)
        out.say(f"{app}: restored from {source}")

    by_app: dict[str, list[FoundHost]] = {}
    for h in found:
        by_app.setdefault(h.app, []).append(h)
    for app in sorted(set(by_app) | set(on_disk)):
        _from_hosts(ctx, state, app, by_app.get(app, []), app in known, out)
        known.add(app)

    for app in sorted(known):
        if state.app(app) is not None:
            state_backup.save(state, app)
    out.apps = sorted(a.name for a in state.apps())
    return out


def _reads(state: State) -> bool:
    try:
        state.apps()
        return True
    except StateDamaged:
        return False


def _salvage(state: State, names: list[str]) -> dict[str, dict[str, Any]]:
    """Every app whose rows still read from a damaged database."""
    try:
        names = sorted(set(names) | {a.name for a in state.apps()})
    except StateDamaged:
        pass
    out = {}
    for name in names:
        try:
            doc = state.export_app(name)
        except StateDamaged:
            continue
        if doc is not None:
            out[name] = doc
    return out


def _move_aside(db: Path) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    aside = db.with_name(f"{db.name}.damaged-{stamp}")
    n = 1
    while aside.exists():
        n += 1
        aside = db.with_name(f"{db.name}.damaged-{stamp}-{n}")
    # the write-ahead log and its index go along: left beside a new database, SQLite would
    # replay the old one's pages into it
    for suffix in ("-wal", "-shm"):
        side = db.with_name(db.name + suffix)
        if side.exists():
            os.replace(side, aside.with_name(aside.name + suffix))
    if db.exists():
        os.replace(db, aside)
    return aside


def _newest(salvaged: dict[str, Any] | None, backup: dict[str, Any] | None) -> tuple[dict[str, Any] | None, str]:
    def updated(doc: dict[str, Any]) -> float:
        try:
            return float(doc["apps"][0]["updated"])
        except (KeyError, IndexError, TypeError, ValueError):
            return 0.0

    if salvaged is not None and (backup is None or updated(salvaged) >= updated(backup)):
        return salvaged, "the damaged database"
    if backup is not None:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(updated(backup)))
        return backup, f"its backup of {when}"
    return None, ""


# -- the hosts ------------------------------------------------------------------------------------

def _apps_on_disk(ctx: Context) -> dict[str, set[str]]:
    """App -> its host names, from this set-up's run and data directories."""
    out: dict[str, set[str]] = {}
    for root in (ctx.paths.run, ctx.paths.data / "apps"):
        try:
            apps = [d for d in root.iterdir() if d.is_dir()]
        except OSError:
            continue
        for d in apps:
            hosts = out.setdefault(d.name, set())
            hosts |= {h.name for h in d.iterdir() if h.is_dir() and h.name.startswith("host-")}
    return out


def _from_hosts(ctx: Context, state: State, app: str, found: list[FoundHost], known: bool, out: Repair) -> None:
    """Add to app `app` the hosts and VMs the machine shows and the state lacks."""
    doc = state.export_app(app) if known else None
    if doc is None:
        now = time.time()
        doc = {"version": EXPORT_VERSION, "hosts": [], "networks": [], "vms": [],
               "apps": [{"name": app, "provider": "local", "blueprint_path": None, "blueprint_text": None,
                         "plan_json": None, "status": RECOVERED, "created": now, "updated": now}]}
    if doc["apps"][0]["provider"] != "local":
        return  # hosts found here are local; a cloud app's are where its backup says
    hosts = {h["name"] for h in doc["hosts"]}
    vms = {v["name"] for v in doc["vms"]}
    vnis = {n["vni"] for n in doc["networks"]}
    added_hosts, added_vms = [], []
    for h in found:
        if h.name in hosts:
            continue
        extra = {"namespace": h.ref, "host": {"namespace": h.ref}, "recovered": True}
        doc["hosts"].append({"app": app, "name": h.name, "host_id": h.host_id, "type": None, "ref": h.ref,
                             "address": h.address or None, "accel": None, "status": "up",
                             "extra": json.dumps(extra)})
        hosts.add(h.name)
        added_hosts.append(h.name)
        for vni in h.vnis:
            if vni not in vnis:
                doc["networks"].append({"app": app, "name": f"vni-{vni}", "vni": vni})
                vnis.add(vni)
    for host, vm, run_dir in _vms_on_disk(ctx, app):
        if vm in vms:
            continue
        base = f"{run_dir}/{vm}"
        running = health.live_pid(f"{base}.pid") is not None
        doc["vms"].append({"app": app, "name": vm, "host": host, "state": "running" if running else "stopped",
                           "detail": json.dumps({"services": [], "ips": [], "macs": [], "networks": [],
                                                 "console": f"{base}.serial", "log": f"{base}.log",
                                                 "vnc": f"{base}.vnc", "accel": _accel(f"{base}.argv"),
                                                 "recovered": True})})
        vms.add(vm)
        added_vms.append(vm)
    if not known or added_hosts or added_vms:
        try:
            state.import_app(doc)
        except StateError as exc:
            out.say(f"{app}: what its hosts show could not be recorded: {exc.message}; "
                    f"`ravel destroy {app} --force` removes it")
            return
    if not known:
        out.say(f"{app}: recovered from its hosts: {_listed('host', sorted(hosts))}, {_listed('VM', sorted(vms))} "
                f"(no blueprint: `ravel publish FILE --name {app}` takes it over, `ravel destroy {app}` removes it)")
    elif added_hosts or added_vms:
        out.say(f"{app}: added from its hosts: {_listed('host', added_hosts)}, {_listed('VM', added_vms)}")


def _vms_on_disk(ctx: Context, app: str) -> list[tuple[str, str, str]]:
    """(host, VM, run dir) for every VM a host's run directory has a start record of, else a
    disk in its data directory."""
    out: dict[str, tuple[str, str, str]] = {}
    run, data = ctx.paths.app_run(app), ctx.paths.app_data(app)
    for root, suffix in ((run, ".argv"), (data, "-disk0.qcow2")):
        try:
            hosts = sorted(d for d in root.iterdir() if d.is_dir() and d.name.startswith("host-"))
        except OSError:
            continue
        for h in hosts:
            for f in sorted(h.iterdir()):
                if f.name.endswith(suffix) and not f.name.startswith("."):
                    vm = f.name[: -len(suffix)]
                    out.setdefault(vm, (h.name, vm, str(run / h.name)))
    return list(out.values())


def _accel(argv_record: str) -> str:
    try:
        argv = json.loads(Path(argv_record).read_text()).get("argv") or []
    except (OSError, ValueError, AttributeError):
        return ""
    for flag, value in zip(argv, argv[1:]):
        if flag == "-accel":
            return str(value).split(",")[0]
    return ""


def _listed(what: str, names: list[str]) -> str:
    if not names:
        return f"no {what}s"
    return f"{len(names)} {what}{'s' if len(names) != 1 else ''} ({', '.join(names)})"
