"""Who holds a lock or a marker, and whether that process still lives.

An owner is a process id, the process's start time (clock ticks since boot, from
/proc/PID/stat), the machine's hostname and its boot id. A pid alone is not enough: pids are
reused, so a marker naming pid 4242 would be "held" by whatever process gets that number next.
With the start time, a marker from this machine is judged at once and exactly. A marker from
another machine cannot be judged by its pid: it stays alive while its holder refreshes it (a
heartbeat; see snapshot/markers.py), and is dead once the heartbeat has stopped for a lease.
"""

from __future__ import annotations

import os
import socket
import time
from dataclasses import dataclass
from typing import Any, Mapping

_TICKS = os.sysconf("SC_CLK_TCK")


def _boot_id() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip()
    except OSError:
        return ""


def start_ticks(pid: int) -> int | None:
    """When process `pid` started, in clock ticks since boot; None when there is no such process."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    # the command name (field 2) may hold spaces and parentheses: count fields after the last ')'
    fields = stat[stat.rfind(b")") + 2:].split()
    try:
        return int(fields[19])  # field 22, starttime
    except (IndexError, ValueError):
        return None


def _boot_time() -> float:
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith("btime "):
                return float(line.split()[1])
    return 0.0


@dataclass(frozen=True)
class Owner:
    pid: int
    start: int  # clock ticks since boot (/proc/PID/stat field 22)
    host: str
    boot: str  # /proc/sys/kernel/random/boot_id: a reboot ends every owner of that boot

    def doc(self) -> dict[str, Any]:
        return {"pid": self.pid, "start": self.start, "host": self.host, "boot": self.boot}

    def started_at(self) -> float:
        """The start as a wall-clock time (meaningful on this machine's boot only)."""
        return _boot_time() + self.start / _TICKS

    def describe(self) -> str:
        return f"pid {self.pid} on {self.host}"


def me() -> Owner:
    pid = os.getpid()
    return Owner(pid, start_ticks(pid) or 0, socket.gethostname(), _boot_id())


def gone(doc: Mapping[str, Any], beat_age: float | None = None, lease_s: float = 0.0) -> str | None:
    """Why the owner recorded in `doc` is dead, or None while it may be alive.

    `doc` holds what `Owner.doc()` wrote (and maybe `time`, when it was written: markers from
    before owners were recorded have only `pid` and `time`). For another machine's owner the
    pid says nothing: it is dead once `beat_age` (seconds since its last heartbeat) exceeds
    `lease_s`; without a heartbeat to go by it is taken as alive."""
    try:
        pid = int(doc["pid"])
    except (KeyError, TypeError, ValueError):
        return "it names no process"
    here = me()
    host, boot = doc.get("host"), doc.get("boot")
    if host is not None and host != here.host:
        if beat_age is not None and lease_s and beat_age > lease_s:
            return f"no heartbeat from {host} for {beat_age:.0f} s"
        return None
    if boot and boot != here.boot:
        return f"{host or 'this machine'} has restarted since"
    now_start = start_ticks(pid)
    if doc.get("start") is not None:
        if now_start is None:
            return f"pid {pid} has exited"
        try:
            recorded = int(doc["start"])
        except (TypeError, ValueError):
            return "its start time is unreadable"
        return None if recorded == now_start else f"pid {pid} is another process now"
    # an older marker (pid and time only) names no machine: it may be another's, so its pid is
    # trusted only once the marker is older than a lease; a process that started after it was
    # written is not its owner
    if beat_age is not None and lease_s and beat_age <= lease_s:
        return None
    if now_start is None:
        return f"pid {pid} has exited"
    try:
        written = float(doc.get("time", 0))
    except (TypeError, ValueError):
        written = 0.0
    if written and _boot_time() + now_start / _TICKS > written + 1.0:
        return f"pid {pid} is another process now"
    return None


def age(doc: Mapping[str, Any], key: str = "time", now: float | None = None) -> float | None:
    try:
        return (time.time() if now is None else now) - float(doc[key])
    except (KeyError, TypeError, ValueError):
        return None
