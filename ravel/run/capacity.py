"""This machine's capacity, read at the edge for the pure planner: its cores and memory (local
host types are sized from them, plan/local_types.py) and, for admission, the memory free now
and what the apps already running here hold and have committed (plan/admission.py)."""

from __future__ import annotations

import math
import os
from pathlib import Path

from ..paths import Paths
from ..plan.admission import AppUse, MachineMemory, Need, admit
from ..plan.catalogue import Catalogue, Machine, load_catalogue
from ..plan.local_types import local_catalogue
from ..plan.placement import QEMU_OVERHEAD_MIB
from ..plan.plan import Plan
from ..plan.reserve import MACHINE
from ..state import State
from .sessions import open_state

BIGGEST_SHOWN = 3  # VMs named when a lab is refused


def catalogue_for(provider: str, machine: Machine | None = None) -> Catalogue:
    """The provider's host types; the local ones sized from `machine` (default: this one)."""
    catalogue = load_catalogue(provider)
    if provider != "local":
        return catalogue
    return local_catalogue(catalogue, machine or this_machine())


def recorded_catalogue(provider: str, plan: dict | None) -> Catalogue:
    """The host types an app was planned with: for a local app, sized from the machine its plan
    recorded, so re-planning it (stop, start) places its VMs as before."""
    machine = (plan or {}).get("machine")
    if provider == "local" and isinstance(machine, dict):
        return catalogue_for(provider, Machine(int(machine["cores"]), int(machine["memory_mib"])))
    return catalogue_for(provider)


def this_machine() -> Machine:
    return Machine(cores=_cores(), memory_mib=_memory_mib())


def _cores() -> int:
    cores = len(os.sched_getaffinity(0))
    quota = _cgroup_value("cpu.max", "cpu", "cpu.cfs_quota_us")
    if quota:  # cgroup v2 "quota period", v1 the quota alone (period in cpu.cfs_period_us)
        parts = quota.split()
        period = parts[1] if len(parts) > 1 else _cgroup_value("", "cpu", "cpu.cfs_period_us")
        if parts[0].isdigit() and period and period.isdigit() and int(parts[0]) > 0:
            cores = min(cores, max(1, math.ceil(int(parts[0]) / int(period))))
    return cores


def _memory_mib() -> int:
    total = _meminfo()["MemTotal"]
    limit = _cgroup_limit()
    return min(total, limit) if limit else total


def memory_now() -> tuple[int, int]:
    """(total, available) MiB now: MemAvailable, or a cgroup's limit less its usage if smaller."""
    info = _meminfo()
    total, available = info["MemTotal"], info["MemAvailable"]
    limit = _cgroup_limit()
    if limit and limit < total:
        usage = _cgroup_value("memory.current", "memory", "memory.usage_in_bytes")
        used = int(usage) // (1 << 20) if usage and usage.isdigit() else 0
        return limit, min(available, limit - used)
    return total, available


def _meminfo() -> dict[str, int]:
    out = {}
    for line in Path("/proc/meminfo").read_text().splitlines():
        key, _, rest = line.partition(":")
        fields = rest.split()
        if fields and fields[0].isdigit():
            out[key] = int(fields[0]) // 1024  # kB -> MiB
    return out


def _cgroup_limit() -> int | None:
    raw = _cgroup_value("memory.max", "memory", "memory.limit_in_bytes")
    if not raw or not raw.isdigit() or int(raw) >= 1 << 60:  # "max", or v1's "unlimited"
        return None
    return int(raw) // (1 << 20)


def _cgroup_value(v2_file: str, v1_controller: str, v1_file: str) -> str | None:
    """A file of this process's own cgroup: the unified hierarchy's, else the v1 controller's."""
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if controllers == "" and v2_file:
            where = Path("/sys/fs/cgroup") / path.lstrip("/") / v2_file
        elif v1_controller in controllers.split(","):
            where = Path("/sys/fs/cgroup") / v1_controller / path.lstrip("/") / v1_file
        else:
            continue
        try:
            return where.read_text().strip()
        except OSError:
            continue
    return None


# ---------------------------------------------------------------------------------------------
# Admission


def admit_local(paths: Paths, app: str, plan: Plan) -> int:
    """Refuse (PlacementError, exit 3) a local lab that does not fit the memory left on this
    machine, before anything is made; returns the MiB left after it."""
    total, available = memory_now()
    apps = running_apps(paths)
    # publishing an app again replaces it: what its QEMUs hold now is its to take again
    own = sum(a.resident_mib for a in apps if a.name == app)
    machine = MachineMemory(total, available + own, MACHINE.memory_mib(total))
    vms = plan.blueprint.vms
    biggest = [(vm.name, vm.memory_mib) for vm in sorted(vms, key=lambda vm: -vm.memory_mib)][:BIGGEST_SHOWN]
    return admit(Need(plan.memory_mib, biggest), machine, [a for a in apps if a.name != app])


def running_apps(paths: Paths) -> list[AppUse]:
    """The local apps this state knows, with what their running VMs committed and hold now."""
    try:
        if not (paths.state / "state.db").exists():  # nothing was ever published: nothing runs
            return []
    except OSError:
        pass  # not ours to read: open_state says so, in the state's own words
    state = open_state(paths)
    try:
        return [use for rec in state.apps() if rec.provider == "local"
                for use in [_use(state, rec.name, rec.plan or {})] if use.committed_mib]
    finally:
        state.close()


def _use(state: State, app: str, plan: dict) -> AppUse:
    vms = {v.name: v for v in state.vms(app)}
    sizes = plan.get("vms") or {}
    committed = resident = 0
    for host in plan.get("hosts") or []:
        running = [vm for vm in host.get("vms") or [] if vm in vms and vms[vm].state == "running"]
        if not running:
            continue
        overhead = QEMU_OVERHEAD_MIB.get(host.get("accel") or "tcg", QEMU_OVERHEAD_MIB["tcg"])
        committed += int((host.get("reserve") or {}).get("memory_mib") or 0)
        for vm in running:
            committed += int((sizes.get(vm) or {}).get("memory_mib") or 0) + overhead
            resident += _resident_mib(vms[vm].detail.get("console") or "")
    return AppUse(app, committed, resident)


def _resident_mib(console: str) -> int:
    """Anonymous memory a VM's QEMU holds now (its guest's touched RAM, its own heap): what
    cannot be reclaimed. From the pid file next to its console; 0 when it is not running."""
    if not console:
        return 0
    try:
        pid = int(Path(console.rsplit(".", 1)[0] + ".pid").read_text().strip())
        if b"qemu" not in Path(f"/proc/{pid}/cmdline").read_bytes():  # a pid used again since
            return 0
        status = Path(f"/proc/{pid}/status").read_text()
    except (OSError, ValueError):
        return 0
    for line in status.splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) // 1024
    return 0
