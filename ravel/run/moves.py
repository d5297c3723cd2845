"""VMs that a new plan puts on another host: stopped where they ran, their disks carried over."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Mapping

from ..providers.base import Host, Provider
from .events import Event

if TYPE_CHECKING:
    from .lab import Lab


def move_vms(lab: Lab, app: str, provider: Provider, hosts: Mapping[str, Host],
             docs: Mapping[str, dict[str, Any]], deadline: float | None = None) -> None:
    """VMs the new plan puts on another host: stop them where they ran, then carry their
    disks over, so the old host's clean-up finds nothing of theirs to delete and the new
    host boots them on the disks they had."""
    new_home = {vm["name"]: (host, vm) for host, doc in docs.items() for vm in doc["vms"]}
    for rec in lab.state.hosts(app):
        old = rec.extra.get("desired")
        if not old:
            continue
        moving = [vm for vm in old["vms"] if vm["name"] in new_home and new_home[vm["name"]][0] != rec.name]
        if not moving:
            continue
        names = {vm["name"] for vm in moving}
        stopped = {**old, "vms": [{**vm, "running": False} if vm["name"] in names else vm for vm in old["vms"]]}
        if rec.name in hosts:
            lab._runtime(provider, hosts[rec.name], deadline).apply(stopped)
        elif rec.ref:
            host = Host(app, rec.name, rec.ref, rec.address or "", old["underlay"]["device"], old["run_dir"],
                        rec.extra.get("host") or {})
            lab._runtime(provider, host, deadline).apply(stopped)
        for vm in moving:
            target = new_home[vm["name"]][1]
            for src, dst in zip(vm["disks"], target["disks"]):
                provider.move_file(rec.name, src["path"], new_home[vm["name"]][0], dst["path"])
            lab.emit(Event("vms", f"{vm['name']} moves {rec.name} -> {new_home[vm['name']][0]}",
                           vm=vm["name"], done=True))
