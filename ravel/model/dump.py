"""A resolved `Blueprint` back to blueprint YAML text (pure).

Used where ravel writes a blueprint itself: a snapshot keeps the app as it ran (every `count`
expanded, paths absolute, MACs pinned) and `ravel import` emits the VMs it read. The output
loads back to an equal Blueprint (tests check the round trip).
"""

from __future__ import annotations

import json
from typing import Any, Mapping

import yaml

from .blueprint import VM, Blueprint, CloudInit, Disk, Ready
from .durations import format_duration
from .impair import Impair, format_rate, format_time


def disk_dict(d: Disk) -> dict[str, Any]:
    if d.image:
        return {"image": d.image, "format": d.format, "bus": d.bus}
    return {"size": d.size_mib, "bus": d.bus}


def impair_dict(impair: Impair) -> dict[str, Any]:
    """The blueprint's spelling of an impairment (`delay: 50ms`, `loss: 1%`...)."""
    out: dict[str, Any] = {}
    if impair.delay_us:
        out["delay"] = format_time(impair.delay_us)
    if impair.jitter_us:
        out["jitter"] = format_time(impair.jitter_us)
    for key in ("loss", "corrupt", "duplicate"):
        if getattr(impair, key):
            out[key] = f"{getattr(impair, key):g}%"
    if impair.rate_kbit:
        out["rate"] = format_rate(impair.rate_kbit)
    return out


def vm_dict(vm: VM, macs: Mapping[int, str] | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"cpus": vm.cpus, "memory": vm.memory_mib}
    if vm.description:
        out["description"] = vm.description
    if vm.nested:
        out["nested"] = True
    if vm.firmware != "bios":
        out["firmware"] = vm.firmware
    if vm.disks:
        out["disks"] = [disk_dict(d) for d in vm.disks]
    if vm.nics:
        nics = []
        for i, n in enumerate(vm.nics):
            nic: dict[str, Any] = {"network": n.network, "model": n.model}
            if n.ip is not None:
                nic["ip"] = str(n.ip)
            mac = n.mac or (macs or {}).get(i)
            if mac:
                nic["mac"] = mac
            if n.impair:
                nic["impair"] = impair_dict(n.impair)
            nics.append(nic)
        out["nics"] = nics
    if vm.boot is not None:
        boot: dict[str, Any]
        if vm.boot.kernel is None:
            boot = {"order": list(vm.boot.order)}
        else:
            boot = {"kernel": vm.boot.kernel}
            if vm.boot.initrd:
                boot["initrd"] = vm.boot.initrd
            if vm.boot.cmdline:
                boot["cmdline"] = vm.boot.cmdline
        out["boot"] = boot
    if vm.cdroms:
        out["cdroms"] = list(vm.cdroms)
    if vm.uefi_vars:
        out["uefi_vars"] = vm.uefi_vars
    if vm.cloud_init is not None:
        out["cloud_init"] = _cloud_init(vm.cloud_init)
    if not vm.agent:
        out["agent"] = False
    if vm.cpu_model:
        out["cpu_model"] = vm.cpu_model
    if vm.user:
        out["user"] = vm.user
    ready = _ready(vm.ready)
    if ready is not None:
        out["ready"] = ready
    if vm.services:
        out["services"] = [_service(s) for s in vm.services]
    return out


def _cloud_init(c: CloudInit) -> bool | dict[str, Any]:
    out: dict[str, Any] = {}
    if c.user_data is not None or c.user_data_file:
        out["user_data"] = c.user_data if c.user_data is not None else c.user_data_file
    meta = json.loads(c.meta_data)
    if meta:
        out["meta_data"] = meta
    if c.network_config is not None:
        out["network_config"] = json.loads(c.network_config)
    return out or True


def _ready(r: Ready) -> Any:
    if r.kind == "tcp":
        return {"tcp": r.port}
    if r.kind == "console":
        return {"console": r.pattern} if r.pattern else None
    return r.kind


def _service(s: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"port": s.port, "protocol": s.protocol}
    if getattr(s, "host_port", None) is not None:
        out["host_port"] = s.host_port
    allow = [str(a) for a in getattr(s, "allow", ())]
    if allow:
        out["allow"] = allow
    return out


def blueprint_dict(bp: Blueprint, name: str | None = None, disks: Mapping[str, list[Disk]] | None = None,
                   macs: Mapping[str, Mapping[int, str]] | None = None) -> dict[str, Any]:
    """`disks[vm]` replaces a VM's disks (a snapshot's restored images); `macs[vm][i]` pins the
    MAC of NIC i where the blueprint left it to the planner."""
    out: dict[str, Any] = {"name": name or bp.name}
    if bp.description:
        out["description"] = bp.description
    if bp.networks:
        nets: dict[str, Any] = {}
        for n in bp.networks:
            net: dict[str, Any] = {"subnet": str(n.subnet)}
            if n.gateway is not None:
                net["gateway"] = str(n.gateway)
            if n.dhcp:
                net["dhcp"] = True
            if n.dns:
                net["dns"] = True
            if n.mtu != 1500:
                net["mtu"] = n.mtu
            if getattr(n, "nat", False):
                net["nat"] = True
            nets[n.name] = net
        out["networks"] = nets
    vms = {}
    for vm in bp.vms:
        if disks and vm.name in disks:
            vm = VM(**{**vm.__dict__, "disks": tuple(disks[vm.name])})
        vms[vm.name] = vm_dict(vm, (macs or {}).get(vm.name))
    out["vms"] = vms
    p = bp.placement
    placement: dict[str, Any] = {"optimize": p.optimize}
    if p.optimize == "cost":
        placement["cpu_overcommit"] = p.cpu_overcommit
    if p.host_types:
        placement["host_types"] = list(p.host_types)
    if p.anti_affinity:
        placement["anti_affinity"] = [list(s) for s in p.anti_affinity]
    if p.max_hosts is not None:
        placement["max_hosts"] = p.max_hosts
    out["placement"] = placement
    deny = getattr(bp, "routing_deny", ())
    if deny:
        out["routing"] = {"deny": [list(pair) for pair in deny]}
    rules = getattr(bp, "firewall", ())
    if rules:
        out["firewall"] = {"allow": [_rule(r) for r in rules]}
    if bp.lifetime is not None:
        out["lifetime"] = {"ttl": format_duration(bp.lifetime.ttl_s), "action": bp.lifetime.action}
    return out


def _rule(r: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"from": r.src, "to": r.dst, "protocol": r.protocol}
    if r.ports:
        out["ports"] = [a if a == b else f"{a}-{b}" for a, b in r.ports]
    return out


def to_yaml(doc: Mapping[str, Any], header: str = "") -> str:
    text = yaml.safe_dump(dict(doc), sort_keys=False, default_flow_style=None, width=4096)
    if header:
        text = "".join(f"# {line}\n" if line else "#\n" for line in header.splitlines()) + text
    return text
