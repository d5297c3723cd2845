"""`ravel netem` and `ravel link`: a NIC's impairment and its cable, set live, recorded in the
state (so a re-publish, stop and start keep them) and applied by reconverging the app (the host
runtime does only what changed: host/netem.py)."""

from __future__ import annotations

from ..model.impair import Impair
from .nics import NicState, resolve_nic
from .publish import reconverge
from .sessions import Context


def set_impair(ctx: Context, app: str, target: str, impair: Impair | None) -> tuple[NicState, int]:
    """`impair` set live on the NIC (Impair(): none, until changed); None: back to the
    blueprint's. Returns the NIC as it is now and the number of host actions."""
    with ctx.state.lock(app, "netem"):
        nic, = resolve_nic(ctx, app, target)
        ctx.state.set_nic(app, nic.vm, nic.index, impair=None if impair is None else impair.to_doc())
        changed = reconverge(ctx, app)
    now, = resolve_nic(ctx, app, f"{nic.vm}:{nic.index}")
    return now, changed


def set_link(ctx: Context, app: str, target: str, up: bool) -> tuple[NicState, int]:
    with ctx.state.lock(app, "link"):
        nic, = resolve_nic(ctx, app, target)
        ctx.state.set_nic(app, nic.vm, nic.index, link="up" if up else "down")
        changed = reconverge(ctx, app)
    now, = resolve_nic(ctx, app, f"{nic.vm}:{nic.index}")
    return now, changed
