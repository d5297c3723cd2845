"""Starting many guests without starving them: admission-controlled boot in waves.

Every QEMU started at once on a few cores (48 guests on 10 namespace hosts of a 2-core machine,
issue 14) leaves each guest a sliver of CPU through its whole boot, and the readiness checks
and host plumbing a sliver too: guests that would each boot in seconds time out after minutes.
So VMs start as CPU frees up: a pool of CPU (this machine for the local provider, whose hosts
share its cores; each instance on a cloud) lets a VM start only while it has a core for it
that the lab's running guests do not take, and a VM holds its place in the pool until its
readiness check passes (or it has booted
longer than the pool's patience, which scales with the slowest boot seen so far: a slow guest
does not stall the rest, and a lab of slow guests is not hurried). Each host watches its
booting guests, and starts each wave's, in one long-running `ravel-host boot` (host/boot.py).

`BootQueue` is the bookkeeping, pure and unit-tested; `start_in_waves` drives it.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import RavelError, StateError
from ..events import Emit, Event
from ..host.desired import to_doc
from ..transport.hostrun import HostRun
from .fanout import parallel

TICK_S = 0.1  # how often the queue looks at readiness and free CPU
FIRST_PATIENCE_S = 180.0  # before any guest of this start was ready: a real OS under TCG takes ~40 s alone
PATIENCE_FACTOR = 3.0  # x the slowest boot seen so far
MIN_PATIENCE_S = 20.0
MOST_PER_CORE = 2  # never more guests booting than this per core, whatever idle time shows


@dataclass
class BootQueue:
    """Which VM starts next. `order`: the VMs still to start; `pool_of`: VM -> its CPU pool."""

    order: list[str]
    pool_of: Mapping[str, str]
    started: dict[str, float] = field(default_factory=dict)  # VM -> when it was started
    ready: dict[str, float] = field(default_factory=dict)  # VM -> seconds it took

    def patience(self) -> float:
        if not self.ready:
            return FIRST_PATIENCE_S
        return max(MIN_PATIENCE_S, PATIENCE_FACTOR * max(self.ready.values()))

    def booting(self, now: float) -> list[str]:
        """Started, not ready, and not yet past the patience: holding a place in its pool."""
        limit = self.patience()
        return [vm for vm, t in self.started.items() if vm not in self.ready and now - t < limit]

    def slow(self, now: float) -> list[str]:
        limit = self.patience()
        return [vm for vm, t in self.started.items() if vm not in self.ready and now - t >= limit]

    def mark_ready(self, vm: str, now: float) -> None:
        if vm in self.started and vm not in self.ready:
            self.ready[vm] = now - self.started[vm]

    def take(self, now: float, room: Callable[[str, int], int]) -> list[str]:
        """The VMs to start now, in order: `room(pool, booting_in_pool)` says how many more that
        pool takes. A VM whose pool is full waits, and does not hold up other pools' VMs."""
        booting: dict[str, int] = {}
        for vm in self.booting(now):
            booting[self.pool_of[vm]] = booting.get(self.pool_of[vm], 0) + 1
        free: dict[str, int] = {}
        out = []
        for vm in self.order:
            pool = self.pool_of[vm]
            if pool not in free:
                free[pool] = room(pool, booting.get(pool, 0))
            if free[pool] > 0:
                out.append(vm)
                free[pool] -= 1
        for vm in out:
            self.order.remove(vm)
            self.started[vm] = now
        return out

    def counts(self, now: float) -> tuple[int, int, int]:
        """(ready, booting or slow, waiting to start)."""
        return len(self.ready), len(self.started) - len(self.ready), len(self.order)


class GuestCpu:
    """How much CPU this lab's own started guests take now, from their QEMUs' /proc/PID/stat
    (utime + stime between looks): on the local provider every namespace host shares this
    machine's cores, and idle TCG guests are not free (a few percent of a core each)."""

    def __init__(self, pidfile_of: Mapping[str, str]) -> None:
        self.pidfile_of = pidfile_of
        self.ticks: dict[str, int] = {}
        self.at = time.monotonic()
        self.rate = 0.0  # cores

    def sample(self, vms: Sequence[str]) -> float:
        now = time.monotonic()
        ticks = {vm: t for vm in vms if (t := _cpu_ticks(self.pidfile_of.get(vm, ""))) is not None}
        used = sum(t - self.ticks[vm] for vm, t in ticks.items() if vm in self.ticks)
        if now > self.at:
            self.rate = used / os.sysconf("SC_CLK_TCK") / (now - self.at)
        self.ticks, self.at = ticks, now
        return self.rate


def _cpu_ticks(pidfile: str) -> int | None:
    try:
        pid = int(Path(pidfile).read_text().strip())
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (OSError, ValueError):
        return None
    fields = stat.rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime, stime


def local_room(cores: int, guests: GuestCpu) -> Callable[[str, int], int]:
    """As many booting at once as this machine has cores, less what the lab's guests that are
    up already take (one at least): a booting TCG guest wants a whole core. Other programs'
    load is not subtracted: they share the CPU with the lab, and waiting for them to go idle
    would only give them the lab's share too."""
    def room(_pool: str, booting: int) -> int:
        free = max(1, math.floor(cores - guests.rate + 0.25))  # a core 3/4 free is a core
        return max(0, min(free, MOST_PER_CORE * cores) - booting)
    return room


def host_room(cpus: Mapping[str, int]) -> Callable[[str, int], int]:
    """A cloud host's own vCPUs (less its reserve) are its pool."""
    return lambda pool, booting: max(1, cpus[pool]) - booting


@dataclass
class _Boot:
    run: HostRun
    vms: frozenset[str] = frozenset()
    seen: int = 0
    ready: set[str] = field(default_factory=set)


class Boots:
    """One `ravel-host boot` per host for the whole start (host/boot.py): it starts the host's
    guests of each wave (an apply with no runtime start) and reports which of its booting guests
    are ready. A host whose process cannot be had is applied the ordinary way (`apply` returns
    None) and its guests count as booting until it answers again."""

    def __init__(self, open_run: Callable[[str, list[dict[str, Any]]], HostRun],
                 checks: Mapping[str, dict[str, Any]], slow: Callable[[str], float]) -> None:
        self.open_run = open_run
        self.checks = checks
        self.slow = slow
        self.runs: dict[str, _Boot] = {}

    def _boot(self, host: str, vms: set[str]) -> _Boot | None:
        if host not in self.runs:
            try:
                self.runs[host] = _Boot(self.open_run(host, [self.checks[vm] for vm in sorted(vms)]), frozenset(vms))
            except RavelError:
                return None  # asked again at the next wave
        return self.runs[host]

    def _drop(self, host: str) -> None:
        b = self.runs.pop(host, None)
        if b is not None:
            b.run.finish()

    def _take(self, host: str, b: _Boot, timeout: float) -> dict[str, Any] | None:
        """The host's next line (None: none within `timeout`); readiness is kept, the end of
        the process drops it."""
        if timeout <= 0 and b.seen >= b.run.received():
            return None
        doc = b.run.next(b.seen, timeout)
        if "vms" not in doc and "applied" not in doc:
            if b.seen < b.run.received():  # it ended (or said something it should not): gone
                self._drop(host)
            return None
        b.seen += 1
        if isinstance(doc.get("vms"), dict):
            b.ready |= {vm for vm, r in doc["vms"].items() if r.get("ready")}
        return doc

    def apply(self, host: str, desired: dict[str, Any], timeout: float) -> dict[str, Any] | None:
        """Apply `desired` (a document) through the host's process: its report, or None when
        that process is not there (the caller applies the ordinary way)."""
        b = self._boot(host, set())
        if b is None:
            return None
        b.run.send(json.dumps({"apply": desired}))
        deadline = time.monotonic() + timeout
        while host in self.runs:
            doc = self._take(host, b, deadline - time.monotonic())
            if doc is None:
                if time.monotonic() >= deadline:
                    self._drop(host)  # it may still be applying: the caller's apply waits for its lock
                continue
            if isinstance(doc.get("applied"), dict):
                return doc["applied"]
        return None

    def watch(self, host: str, vms: set[str]) -> None:
        """Watch these of the host's guests from now on (only a change is sent)."""
        b = self.runs.get(host) if not vms else self._boot(host, vms)
        if b is not None and frozenset(vms) != b.vms:
            b.run.send(json.dumps({"checks": [self.checks[vm] for vm in sorted(vms)], "slow": self.slow(host)}))
            b.vms = frozenset(vms)

    def poll(self) -> set[str]:
        """VMs reported ready since the last poll."""
        ready: set[str] = set()
        for host, b in list(self.runs.items()):
            while self._take(host, b, 0) is not None:
                pass
            ready |= b.ready
            b.ready = set()
        return ready

    def close(self) -> None:
        for host in list(self.runs):
            self._drop(host)


def start_in_waves(queue: BootQueue, room: Callable[[str, int], int], host_of: Mapping[str, str],
                   start: Callable[[Sequence[str]], None], watches: Boots, emit: Emit,
                   deadline: float, sleep: Callable[[float], None] = time.sleep,
                   guests: GuestCpu | None = None) -> None:
    """Start every VM of the queue as its pool frees up; return once the last is started (the
    guests still booting are `--wait`'s to wait for). `start(vms)` applies the hosts that
    gain those VMs."""
    total = len(queue.order)
    try:
        while queue.order:
            now = time.monotonic()
            if now > deadline:
                raise StateError(f"out of time with {len(queue.order)} of {total} VMs not yet started",
                                 hint="publish again to continue (it starts the rest), or raise --timeout")
            for vm in watches.poll():
                queue.mark_ready(vm, now)
            if guests is not None:
                guests.sample(list(queue.ready))
            batch = queue.take(now, room)
            if batch:
                start(batch)
            booting = set(queue.booting(time.monotonic()))
            for host in sorted(set(host_of.values())):
                watches.watch(host, {vm for vm in booting if host_of[vm] == host})
            ready, up, waiting = queue.counts(time.monotonic())
            if batch:
                emit(Event("vms", f"{ready} ready, {up} booting, {waiting} waiting to start "
                                  f"(started {', '.join(batch)})"))
            if queue.order:
                sleep(TICK_S)
    finally:
        watches.close()


# ---------------------------------------------------------------------------------------------
# The publish stage


WATCH_S = 0.2  # how often a host reports its booting guests


def apply_in_waves(ctx: Any, ap: Any, sites: Mapping[str, Any], provider: Any, hosts: Mapping[str, Any],
                   running: Mapping[str, bool] | None, make_desired: Callable[[Mapping[str, bool]], Mapping[str, Any]],
                   apply: Callable[..., dict[str, Any]], ready_checks: Mapping[str, dict[str, Any]],
                   deadline: float | None, already: set[str]) -> list[dict[str, Any]]:
    """Apply every host's desired state, starting its guests in waves when more are to start
    than the CPU takes at once. `apply(host, desired, quiet, send=None)` applies one host
    (through `send(desired)` when given, unless that returns None); `already`: VMs that run now
    (they keep running); returns every host report."""
    final = {vm.name: (running or {}).get(vm.name, True) for vm in ap.vms}
    host_of = {vm.name: ap.host_of(vm.name) for vm in ap.vms}
    to_start = [vm.name for vm in ap.vms if final[vm.name] and vm.name not in already]
    guests = GuestCpu({vm: f"{sites[host].run_dir}/{vm}.pid" for vm, host in host_of.items()})
    cores_of = {h.name: h.type.cpus - h.reserve_cpus for h in ap.placement.hosts}
    if ap.plan.provider == "local":
        room = local_room(len(os.sched_getaffinity(0)), guests)
        pool_of = {vm: "machine" for vm in host_of}
    else:
        room = host_room(cores_of)
        pool_of = dict(host_of)
    queue = BootQueue(list(to_start), pool_of)
    everything = make_desired(final)
    first = queue.take(time.monotonic(), room)
    if not queue.order:  # the CPU takes them all at once: one apply, as ever
        return parallel(lambda h: apply(h, everything[h], False), list(everything))
    flags = {vm: final[vm] and (vm in already or vm in first) for vm in final}
    step = make_desired(flags)
    reports = parallel(lambda h: apply(h, step[h], False), list(everything))
    started_at = time.monotonic()
    end = deadline or started_at + 3600.0
    ctx.emit(Event("vms", f"{len(to_start)} VMs to start, as CPU frees up: started {', '.join(first)}"))

    def slow(host: str) -> float:
        # the checks' own bounds stretch with how many guests boot per core of their pool
        booting = len(queue.booting(time.monotonic()))
        cores = len(os.sched_getaffinity(0)) if ap.plan.provider == "local" else max(1, cores_of.get(host, 1))
        return max(1.0, booting / cores)

    def open_run(host: str, checks: list[dict[str, Any]]) -> HostRun:
        rt = ctx.hosts.runtime(provider, hosts[host], deadline)
        return HostRun(host, rt, {"run_dir": everything[host].run_dir, "checks": checks, "interval": WATCH_S,
                                  "max_s": max(1.0, end - time.monotonic()), "slow": slow(host)},
                       command="boot")

    boots = Boots(open_run, ready_checks, slow)

    def start(batch: Sequence[str]) -> None:
        for vm in batch:
            flags[vm] = True
        desired = make_desired(flags)

        def one(host: str) -> dict[str, Any]:
            send = lambda wanted: boots.apply(host, to_doc(wanted), max(30.0, end - time.monotonic()))  # noqa: E731
            return apply(host, desired[host], True, send)

        reports.extend(parallel(one, sorted({host_of[vm] for vm in batch})))

    start_in_waves(queue, room, host_of, start, boots, ctx.emit, end, guests=guests)
    return reports
