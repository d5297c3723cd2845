"""Is an app what its state says? `ravel list` asks cheaply, for every app at once: a pidfile and
/proc for each VM whose host shares this machine's files (the local provider), the last
observation for remote hosts (written by publish and status, with its age), and whether a
command holds the app's lock right now. `ravel status` asks the hosts and, for a VM that should
run and does not, says how it ended (host/supervise.py) and what its console printed last.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from ..host import ready, supervise
from ..host.proc import cmdline, read_pidfile, stat
from ..paths import Paths
from ..state import AppRecord, State, VmRecord

TAIL_LINES = 5
OBSERVED = "observed"  # the key of a host's extra: {"at": epoch, "vms": {vm: running}}


# -- one VM, on a host that shares this machine's files ------------------------------------------

def pidfile(detail: Mapping[str, Any]) -> str:
    return str(detail["console"]).rsplit(".", 1)[0] + ".pid"


def live_pid(path: str) -> int | None:
    """The pid in pidfile `path` when it is a live QEMU started with that very pidfile (a reused
    pid is some other process)."""
    pid = read_pidfile(path)
    if pid is None:
        return None
    st = stat(pid)
    if st is None or st[0] in ("Z", "X"):
        return None
    seen = cmdline(pid) or ()
    return pid if any(a == "-pidfile" and b == path for a, b in zip(seen, seen[1:])) else None


def local_end(detail: Mapping[str, Any]) -> dict[str, Any]:
    """How a VM that is not running ended, read from this machine's files: as the host runtime's
    `observe` reports it ({"ended", "reason", "tail"}); {} when it never started."""
    pid_path = pidfile(detail)
    if not Path(pid_path[: -len(".pid")] + ".argv").exists():
        return {}
    record = supervise.read_exit(supervise.exit_path(pid_path))
    return {"ended": record, "reason": supervise.describe(record),
            "tail": ready.last_lines(ready.this_boot(str(detail.get("log") or "")), TAIL_LINES)}


def down_state(ended: Mapping[str, Any]) -> str:
    """What status calls a VM that should run and does not: crashed, powered off (its guest
    shut down), or missing (it never started, or its host does not say)."""
    if not ended or ended.get("reason") in (None, "", "never started"):
        return "missing"
    return "crashed" if supervise.crashed(ended.get("ended")) else "powered off"


# -- observations of remote hosts ---------------------------------------------------------------

def observation(vms: Mapping[str, Mapping[str, Any]], now: float | None = None) -> dict[str, Any]:
    """A host runtime's report of its VMs ({vm: {"running": ...}}) as kept in the host's extra."""
    return {"at": time.time() if now is None else now,
            "vms": {name: bool(v.get("running")) for name, v in vms.items()}}


def remember(state: State, app: str, observed: Mapping[str, Mapping[str, Any] | None]) -> None:
    """Keep what `ravel status` saw on each host that answered, for `ravel list`."""
    for host, vms in observed.items():
        if vms is not None:
            state.note_host(app, host, OBSERVED, observation(vms))


# -- one app ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class AppHealth:
    app: str
    status: str  # running, degraded (1 of 4 VMs down), stopped, destroying, broken (...)
    recorded: str  # the status the state records
    vms: int  # VMs meant to be running
    down: tuple[str, ...] = ()  # of those, the ones that are not
    unknown: tuple[str, ...] = ()  # on remote hosts never observed
    seen_s: float | None = None  # age of the oldest remote observation used
    busy: int | None = None  # pid of the command holding the app's lock
    hosts: int = 0
    vm_names: tuple[str, ...] = field(default_factory=tuple)
    provider: str = ""


def app_health(state: State, rec: AppRecord, now: float | None = None) -> AppHealth:
    now = time.time() if now is None else now
    vms = state.vms(rec.name)
    hosts = state.hosts(rec.name)
    wanted = [v for v in vms if v.state == "running"]
    down: list[str] = []
    unknown: list[str] = []
    ages: list[float] = []
    seen = {h.name: h.extra.get(OBSERVED) for h in hosts}
    for v in wanted:
        alive = _alive(rec, v, seen.get(v.host or ""))
        if alive is None:
            unknown.append(v.name)
        elif not alive:
            down.append(v.name)
        if rec.provider != "local" and isinstance(seen.get(v.host or ""), dict):
            ages.append(max(0.0, now - float(seen[v.host or ""].get("at") or now)))
    busy = lock_holder(state.dir, rec.name)
    seen_s = max(ages) if ages else None
    return AppHealth(rec.name, label(rec.status, busy, len(wanted), down, unknown, seen_s), rec.status,
                     len(wanted), tuple(down), tuple(unknown), seen_s, busy, len(hosts),
                     tuple(v.name for v in vms), rec.provider)


def _alive(rec: AppRecord, v: VmRecord, seen: Any) -> bool | None:
    if rec.provider == "local":  # its hosts share this machine's files: ask /proc
        return live_pid(pidfile(v.detail)) is not None
    if not isinstance(seen, dict) or v.name not in (seen.get("vms") or {}):
        return None
    return bool(seen["vms"][v.name])


def label(recorded: str, busy: int | None, wanted: int, down: list[str] | tuple[str, ...],
          unknown: list[str] | tuple[str, ...] = (), seen_s: float | None = None) -> str:
    """The one word (and its reason) `ravel list` shows for an app. Pure."""
    if recorded in ("publishing", "destroying"):
        if busy:
            return recorded
        return "destroying (interrupted: destroy it again)" if recorded == "destroying" \
            else "broken (publish interrupted: publish it again)"
    details = []
    if wanted == 0:
        word = "stopped"
    elif not down:
        word = "running"
    elif len(down) == wanted:
        word = "broken"
        details.append(f"{'all ' if wanted > 1 else ''}{wanted} VM{'s' if wanted > 1 else ''} down")
    else:
        word = "degraded"
        details.append(f"{len(down)} of {wanted} VMs down")
    if unknown:
        details.append(f"{len(unknown)} not observed yet")
    if seen_s is not None:
        details.append(f"seen {ago(seen_s)}")
    return f"{word} ({', '.join(details)})" if details else word


def unknown_apps(paths: Paths, known: set[str]) -> list[AppHealth]:
    """Apps whose run or data directories this set-up holds and its state does not know (a
    damaged or emptied state): listed, so they are not forgotten."""
    names: set[str] = set()
    for root in (paths.run, paths.data / "apps"):
        try:
            names |= {d.name for d in root.iterdir() if d.is_dir()}
        except OSError:
            continue
    return [AppHealth(n, "unknown to the state (`ravel doctor --repair-state`)", "", 0, provider="local")
            for n in sorted(names - known)]


def ago(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s ago"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min ago"
    if seconds < 36 * 3600:
        return f"{seconds / 3600:.0f} h ago"
    return f"{seconds / 86400:.0f} days ago"


def lock_holder(state_dir: Path, app: str) -> int | None:
    """The pid holding app `app`'s lock (an flock: /proc/locks lists it), without touching the
    lock itself: asking must never make a command starting now find the app busy."""
    try:
        st = os.stat(state_dir / "locks" / f"{app}.lock")
        with open("/proc/locks") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    want = (os.major(st.st_dev), os.minor(st.st_dev), st.st_ino)
    for line in lines:
        parts = line.split()
        if "->" in parts or len(parts) < 6 or parts[1] != "FLOCK":
            continue  # a waiter, or another kind of lock
        try:
            major, minor, ino = parts[5].split(":")
            if (int(major, 16), int(minor, 16), int(ino)) == want:
                return int(parts[4])
        except ValueError:
            continue
    return None
