"""VMs that a new plan puts on another host: stopped where they ran, their disks carried over
(diskmove.py: renamed where hosts share this machine's files, else sent over the transports)."""

from __future__ import annotations

from dataclasses import replace
from typing import Mapping

from ..host.desired import Desired
from ..providers.base import Host, Provider
from .diskmove import Moved, move_disk
from ..events import Event
from .sessions import Context, applied_desired, recorded_host


def move_vms(ctx: Context, app: str, provider: Provider, hosts: Mapping[str, Host],
             desired: Mapping[str, Desired], deadline: float | None = None) -> None:
    """VMs the new plan puts on another host: stop them where they ran, then carry their
    disks over, so the old host's clean-up finds nothing of theirs to delete and the new
    host boots them on the disks they had."""
    new_home = {vm.name: (host, vm) for host, d in desired.items() for vm in d.vms}
    for rec in ctx.state.hosts(app):
        old = applied_desired(rec)
        if old is None:
            continue
        moving = [vm for vm in old.vms if vm.name in new_home and new_home[vm.name][0] != rec.name]
        if not moving:
            continue
        names = {vm.name for vm in moving}
        stopped = replace(old, vms=tuple(replace(vm, running=False) if vm.name in names else vm for vm in old.vms))
        if rec.name in hosts:
            source = hosts[rec.name]
        elif rec.ref:
            source = recorded_host(app, rec, old)
        else:
            continue  # never made: no disk of theirs exists anywhere
        # stopped first: a disk is carried only once no QEMU writes it (diskmove checks the lock too)
        ctx.hosts.runtime(provider, source, deadline).apply(stopped)
        from_t = ctx.hosts.transport(provider, source)
        for vm in moving:
            name, (to, target) = vm.name, new_home[vm.name]
            to_t = ctx.hosts.transport(provider, hosts[to])

            def note(msg: str, name: str = name) -> None:
                ctx.emit(Event("vms", f"{name}: {msg}", vm=name))

            done = [move_disk(from_t, src.path, to_t, dst.path, deadline, note)
                    for src, dst in zip(vm.disks, target.disks)]
            ctx.emit(Event("vms", f"{name} moves {rec.name} -> {to} ({Moved.total(done).describe()})",
                           vm=name, done=True))
