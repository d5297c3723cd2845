"""Local host types sized from the machine ravel runs on. Pure: the machine is read at the edge
(ravel/run/capacity.py) and passed in.

A local host is a network namespace: it has no CPUs or memory of its own, so its type is a
share of this machine. The ladder keeps the packaged nominal sizes (local-small, -medium,
-large: blueprints and snapshots name them), goes on doubling (local-xlarge, 2xlarge, ...)
while a size fits, and ends with local-machine: every core, and the memory less what the
machine keeps for itself (reserve.MACHINE). No type offers more vCPUs than the machine has.
Prices stay nominal and proportional to memory, as in the packaged catalogue.
"""

from __future__ import annotations

import dataclasses

from .catalogue import Catalogue, HostType, Machine
from .reserve import MACHINE

BIGGEST = "local-machine"


def biggest_memory_mib(machine: Machine) -> int:
    return machine.memory_mib - MACHINE.memory_mib(machine.memory_mib)


def local_catalogue(template: Catalogue, machine: Machine) -> Catalogue:
    """The packaged local catalogue (`template`) cut to, and completed up to, this machine."""
    top = biggest_memory_mib(machine)
    per_mib = min(t.hourly_cost / t.memory_mib for t in template.host_types)
    ladder = sorted(template.host_types, key=lambda t: t.memory_mib)
    sizes = [(t.name, t.cpus, t.memory_mib) for t in ladder]
    _, cpus, mem = sizes[-1]
    for step in range(1, 64):  # 16 GiB, 32 GiB, ... up to the machine
        mem, cpus = mem * 2, cpus * 2
        if mem >= top:
            break
        times = 2 ** (step - 1)  # as clouds name them: xlarge, 2xlarge, 4xlarge, ...
        sizes.append((f"local-{'' if times == 1 else times}xlarge", cpus, mem))
    types = [
        _host(name, min(cpus, machine.cores), mem, per_mib)
        for name, cpus, mem in sizes
        if mem < top
    ]
    if top > 0:
        types.append(_host(BIGGEST, machine.cores, top, per_mib))
    gib = machine.memory_mib / 1024
    return dataclasses.replace(
        template,
        source=f"this machine: {machine.cores} cores, {gib:.1f} GiB (read at plan time)",
        note=template.note + f" Sized from this machine: the biggest type, {BIGGEST}, is every core "
        f"and its memory less {MACHINE.fixed_mib} MiB + {MACHINE.share:.0%} kept for the machine itself.",
        host_types=tuple(types),
        machine=machine,
    )


def _host(name: str, cpus: int, memory_mib: int, per_mib: float) -> HostType:
    return HostType(name, max(1, cpus), memory_mib, round(per_mib * memory_mib, 6), False, "local")
