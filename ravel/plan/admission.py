"""Admission on this machine: does a local lab's memory fit what is left, counting the apps that
already run here? Pure arithmetic; the figures are read at the edge (ravel/run/capacity.py).

Guest RAM is taken lazily: a QEMU holds only what its guest has touched so far, and grows to
all of it. So what the kernel reports available now (MemAvailable) overstates what a new lab
may take by what running labs will still grow by:

    available = MemAvailable now
                - for each running app: what it committed (guests + QEMU + host reserves)
                  less what its QEMUs hold now (resident), i.e. what it will still grow by
                - the machine's own reserve (reserve.MACHINE)

and a lab is admitted when its own commitment (Plan.memory_mib) is no more than that. Other
programs are counted by what they use now. CPUs are not admitted here: the blueprint's
cpu_overcommit says how far they may be shared, and the planner holds each host to it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ..errors import PlacementError


@dataclass(frozen=True)
class AppUse:
    """A running app of this machine: what its plan committed and what its QEMUs hold now."""

    name: str
    committed_mib: int
    resident_mib: int


@dataclass(frozen=True)
class MachineMemory:
    total_mib: int
    available_mib: int  # MemAvailable (or a cgroup's limit less its usage), now
    reserve_mib: int  # kept for the machine itself


@dataclass(frozen=True)
class Need:
    memory_mib: int  # guests + QEMU + host reserves
    biggest: Sequence[tuple[str, int]]  # the biggest VMs, (name, MiB), biggest first


def available_mib(machine: MachineMemory, running: Sequence[AppUse]) -> int:
    """What a new lab may commit: free memory now, less what running apps will still grow by
    (an app already holding more than it committed is counted as it is, in MemAvailable)."""
    return machine.available_mib - sum(growth(a) for a in running) - machine.reserve_mib


def growth(app: AppUse) -> int:
    return max(0, app.committed_mib - app.resident_mib)


def admit(need: Need, machine: MachineMemory, running: Sequence[AppUse]) -> int:
    """The memory left after this lab (MiB); PlacementError (exit 3) when it does not fit."""
    left = available_mib(machine, running)
    if need.memory_mib <= left:
        return left - need.memory_mib
    others = sum(growth(a) for a in running)
    apps = f"{len(running)} running app{'s' if len(running) != 1 else ''}"
    promised = f", {_size(others)} more promised to {apps}" if running else ""
    biggest = ", ".join(f"{name} {_size(mib)}" for name, mib in need.biggest)
    raise PlacementError(
        f"this lab needs {_size(need.memory_mib)} of memory (guests, QEMU and host reserves) but "
        f"{_size(max(0, left))} is available to ravel on this machine "
        f"({_size(machine.available_mib)} free now{promised}, {_size(machine.reserve_mib)} kept for "
        f"the machine); biggest VMs: {biggest}",
        dimension="memory",
        hint="make the VMs smaller or fewer, or stop or destroy other apps (`ravel list`)",
    )


def _size(mib: int) -> str:
    return f"{mib / 1024:.1f} GiB" if abs(mib) >= 1024 else f"{mib} MiB"
