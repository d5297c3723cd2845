"""Each NIC of an app as it is now: its impairment (the blueprint's, or what `ravel netem` set),
its cable (`ravel link`), and where it lives on its host (tap, bridge), which `ravel status`
shows and `ravel capture` needs. Read-only."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, replace
from typing import Any

from ..errors import StateError
from ..model.impair import Impair, effective
from ..model.blueprint import Blueprint
from ..model.resolve import load_blueprint
from .sessions import Context


@dataclass(frozen=True)
class NicState:
    vm: str
    index: int
    network: str
    host: str
    tap: str  # "" when the host has not been given the VM yet
    impair: Impair  # in force now
    source: str  # "blueprint", "live" (ravel netem) or "" (none)
    link: str  # "up" | "down"

    def to_dict(self) -> dict[str, Any]:
        return {"vm": self.vm, "nic": self.index, "network": self.network, "host": self.host, "tap": self.tap,
                "impair": self.impair.to_doc(), "impair_source": self.source, "link": self.link}


def taps_of(ctx: Context, app: str) -> dict[tuple[str, int], tuple[str, str]]:
    """(vm, NIC index) -> (host, tap), from what each host was last told (its desired document)."""
    out: dict[tuple[str, int], tuple[str, str]] = {}
    for rec in ctx.state.hosts(app):
        for vm in (rec.extra.get("desired") or {}).get("vms") or []:
            argv = vm.get("argv") or []
            for flag, value in zip(argv, argv[1:]):
                m = re.match(r"^tap,id=net(\d+),ifname=([^,]+)", value) if flag == "-netdev" else None
                if m:
                    out[(vm["name"], int(m.group(1)))] = (rec.name, m.group(2))
    return out


def bridges_of(ctx: Context, app: str) -> dict[str, list[tuple[str, str]]]:
    """network -> [(host, bridge)] of every host that carries it."""
    out: dict[str, list[tuple[str, str]]] = {}
    for rec in ctx.state.hosts(app):
        for net in (rec.extra.get("desired") or {}).get("networks") or []:
            out.setdefault(net["name"], []).append((rec.name, net["bridge"]))
    return out


def _blueprint(ctx: Context, app: str) -> Blueprint:
    rec = ctx.state.require_app(app)
    if rec.blueprint_text is None:
        raise StateError(f"app {app!r} has no blueprint in the state (it was recovered from its hosts)",
                         hint=f"`ravel publish FILE --name {app}` gives it one")
    base = os.path.dirname(rec.blueprint_path) if rec.blueprint_path else None
    return load_blueprint(rec.blueprint_text, rec.blueprint_path or app, base)


def nic_states(ctx: Context, app: str) -> list[NicState]:
    bp = _blueprint(ctx, app)
    live = ctx.state.nic_settings(app)
    taps = taps_of(ctx, app)
    out = []
    for rec in ctx.state.vms(app):
        vm = bp.vm(rec.name)
        for i, nic in enumerate(vm.nics):
            settings = live.get(rec.name, {}).get(i) or {}
            impair = effective(nic.impair, settings)
            source = ("live" if settings.get("impair") is not None else "blueprint") if impair else ""
            host, tap = taps.get((rec.name, i), (rec.host or "", ""))
            out.append(NicState(rec.name, i, nic.network, host, tap, impair, source, settings.get("link") or "up"))
    return out


def with_live_impairments(bp: Blueprint, live: dict[str, dict[int, dict[str, Any]]]) -> Blueprint:
    """The blueprint with each NIC's impairment as it is now (what `ravel netem` set wins): what
    a snapshot keeps, so the lab published from it behaves the same. Pulled cables are not part
    of a blueprint."""
    vms = []
    for vm in bp.vms:
        nics = tuple(replace(n, impair=effective(n.impair, live.get(vm.name, {}).get(i)) or None)
                     for i, n in enumerate(vm.nics))
        vms.append(replace(vm, nics=nics))
    return replace(bp, vms=tuple(vms))


def resolve_nic(ctx: Context, app: str, target: str, need_one: bool = True) -> list[NicState]:
    """`VM`, `VM:N`, `VM:ethN` or `VM:NETWORK` -> that VM's NICs (all of them for a bare VM
    unless `need_one`)."""
    vm, _, which = target.partition(":")
    nics = [n for n in nic_states(ctx, app) if n.vm == vm]
    if not nics:
        known = sorted({n.vm for n in nic_states(ctx, app)})
        raise StateError(f"app {app!r} has no VM {vm!r} with a NIC" + (f" (VMs with NICs: {', '.join(known)})"
                                                                          if known else ""))
    names = ", ".join(f"{vm}:{n.index} ({n.network})" for n in nics)
    if not which:
        if need_one and len(nics) > 1:
            raise StateError(f"{vm} has {len(nics)} NICs: say which one", hint=f"one of {names}")
        return nics
    m = re.match(r"^(?:eth)?(\d+)$", which)
    found = [n for n in nics if (m and n.index == int(m.group(1))) or (not m and n.network == which)]
    if not found:
        raise StateError(f"{vm} has no NIC {which!r}", hint=f"its NICs: {names}")
    if need_one and len(found) > 1:
        raise StateError(f"{vm} has {len(found)} NICs on {which}: say which by number", hint=f"one of {names}")
    return found
