"""What `ravel graph FILE|APP` names, as a Graph: a blueprint file planned as `ravel plan` would
plan it (addresses resolved, placeholder VNIs), or an app as the state records it, with each
VM's state and readiness as `ravel status` observes it."""

from __future__ import annotations

import os
from typing import Callable

from ..model.resolve import load_blueprint
from ..plan.app import resolve_app, sketch_vnis
from ..plan.fit import check_fit
from ..plan.plan import make_plan
from ..errors import PlacementError, StateError
from ..plan.network import plan_network
from ..run.blueprints import read_blueprint
from ..run.capacity import catalogue_for
from ..run.observe import VmStatus
from ..run.sessions import Context
from .model import Graph, HostRow, Live, VmRow, from_app_plan, from_network, from_records, with_live


def is_file(target: str) -> bool:
    """FILE|APP: a path to a file (or anything that looks like one) is a blueprint."""
    return os.path.exists(target) or target.endswith((".yaml", ".yml")) or os.sep in target


def plan_graph(path: str, provider: str = "local", optimize: str | None = None,
               on_unplaced: Callable[[str], None] = lambda _: None) -> Graph:
    """The blueprint as `ravel plan` would place it; where no host type of the provider holds
    one of its VMs, drawn without hosts (`on_unplaced` says why) instead of refused."""
    bp = read_blueprint(path)
    catalogue = catalogue_for(provider)
    problems = check_fit(bp, catalogue, optimize)
    if problems:
        on_unplaced(f"{len(problems)} VM(s) fit no {provider} host type ({problems[0]}); drawn without hosts")
        return from_network(bp, bp.name, plan_network(bp, bp.name, sketch_vnis(bp)))
    try:
        plan = make_plan(bp, catalogue, optimize)
    except PlacementError as exc:
        on_unplaced(f"{exc.message}; drawn without hosts")
        return from_network(bp, bp.name, plan_network(bp, bp.name, sketch_vnis(bp)))
    return from_app_plan(resolve_app(bp, bp.name, plan, sketch_vnis(bp)))


def app_graph(ctx: Context, app: str) -> Graph:
    """The app as the state records it (no host is asked: see `live`)."""
    rec = ctx.state.require_app(app)
    if not rec.blueprint_text:
        raise StateError(f"app {app!r} has no blueprint recorded", hint=f"publish {app} again")
    where = rec.blueprint_path or f"<{app}>"
    bp = load_blueprint(rec.blueprint_text.encode(), file=where,
                        base_dir=os.path.dirname(os.path.abspath(rec.blueprint_path or ".")))
    hosts = [HostRow(h.name, h.type, h.accel) for h in ctx.state.hosts(app)]
    vms = [VmRow(v.name, v.host, v.state, list(v.detail.get("ips") or []), list(v.detail.get("macs") or []))
           for v in ctx.state.vms(app)]
    return from_records(bp, app, hosts, vms)


def live(statuses: list[VmStatus]) -> dict[str, Live]:
    return {s.name: Live(s.state, s.ready, tuple(s.services), s.booting_s) for s in statuses}


def observed(g: Graph, statuses: list[VmStatus]) -> Graph:
    return with_live(g, live(statuses))
