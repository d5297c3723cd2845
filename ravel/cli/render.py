"""Tables and text for the terminal; no decisions are made here."""

from __future__ import annotations

import time

from rich.console import Group
from rich.table import Table
from rich.text import Text

from ..model.durations import approx_duration
from ..model.units import format_mib
from ..model.impair import from_doc
from ..plan.mtu import UNDERLAY_MTU, max_guest_mtu
from ..plan.plan import Plan
from ..run.health import ago


def plan_table(plan: Plan) -> Table:
    p = plan.placement
    cur = plan.catalogue.currency
    money = (lambda v: f"{v:.4f}") if cur == "nominal" else (lambda v: f"${v:.4f}")
    t = Table(
        title=f"{plan.blueprint.name}: {len(plan.blueprint.vms)} VMs on {len(p.hosts)} {plan.provider} hosts "
        f"({plan.optimize})",
        title_justify="left",
    )
    t.add_column("host")
    t.add_column("type")
    t.add_column("vCPU", justify="right")
    t.add_column("memory", justify="right")
    t.add_column("accel")
    t.add_column("per hour", justify="right")
    t.add_column("VMs")
    for h in p.hosts[:LISTED_HOSTS]:
        t.add_row(h.name, h.type.name, str(h.type.cpus), format_mib(h.type.memory_mib), h.accel,
                  money(h.type.hourly_cost), _vm_list(h.vms))
    if len(p.hosts) > LISTED_HOSTS:
        rest = p.hosts[LISTED_HOSTS:]
        t.add_row(f"... {len(rest)} more", "", str(sum(h.type.cpus for h in rest)),
                  format_mib(sum(h.type.memory_mib for h in rest)), "", money(sum(h.type.hourly_cost for h in rest)),
                  f"{sum(len(h.vms) for h in rest)} VMs (--json lists every host)")
    ratio = plan.ratio
    proof = "optimal" if p.optimal else f"gap <= {plan.gap:.1%}"
    lines = [
        f"cost {money(p.cost_per_hour)}/h  lower bound {money(p.lower_bound_per_hour)}/h  "
        f"cost/bound {ratio:.3f} ({proof})" + ("  (prices are nominal for local hosts)" if cur == "nominal" else "")
    ]
    machine = plan.catalogue.machine
    if machine is not None:
        kept = ", ".join(f"{mib} MiB" for mib in sorted({h.reserve_mib for h in p.hosts}))
        lines.append(f"local host types sized from this machine: {machine.cores} cores, "
                     f"{machine.memory_mib / 1024:.1f} GiB; each host keeps {kept} for itself; "
                     f"the lab takes {plan.memory_mib / 1024:.1f} GiB with its QEMUs")
    nets = plan.blueprint.networks
    biggest = max((n.mtu for n in nets), default=1500)
    others = ", ".join(f"{p} {max_guest_mtu(p)}" for p in UNDERLAY_MTU if p != plan.provider)
    lines.append(f"guest MTU: up to {max_guest_mtu(plan.provider)} on {plan.provider}"
                 + (f", this lab uses {biggest}" if nets else "") + f" (elsewhere: {others})")
    lines += [f"note: {n}" for n in plan.notes()]
    t.caption = "\n".join(lines)
    t.caption_justify = "left"
    return t


LISTED_VMS = 12  # per host; a host of a large plan carries hundreds (`--json` lists them all)
LISTED_HOSTS = 100  # a plan of 100,000 VMs has ~1,000 hosts: unreadable, and seconds to lay out


def _vm_list(names) -> str:  # names: sequence of VM names
    if len(names) <= LISTED_VMS:
        return ", ".join(names)
    return ", ".join(names[:LISTED_VMS]) + f" and {len(names) - LISTED_VMS} more ({len(names)} VMs)"


def vm_table(app: str, vms) -> Table:  # vms: list[VmStatus]
    t = Table(title=app, title_justify="left")
    exposing = any(getattr(v, "services", None) for v in vms)
    # one caption instead of a console column repeating `ravel console APP VM` on every row: on
    # an 80-column terminal (or a pipe) that column cut the forwarded ports short ("127.0.0.1:40…")
    cols = ["VM", "state", "ready", "host", "accel", "addresses"] + (["services"] if exposing else [])
    for col in cols:
        # an address or a forwarded port is what the user copies: never cut it short
        t.add_column(col, no_wrap=col in ("addresses", "services"))
    for v in vms:
        row = [v.name, v.state, readiness(v), v.host, v.accel, "\n".join(v.ips) or "-"]
        if exposing:
            row.append("\n".join(v.services) or "-")
        t.add_row(*row)
    t.caption, t.caption_justify = f"console: ravel console {app} VM", "left"
    return t


def readiness(v) -> str:  # v: VmStatus
    """ready, "booting 42s (ssh)", "not checked"; "-" for a VM that is not running."""
    if v.ready == "booting":
        took = f" {v.booting_s:.0f}s" if v.booting_s is not None else ""
        return f"booting{took} ({v.check})"
    return v.ready


def down_lines(app: str, vms) -> list[str]:  # vms: list[VmStatus]
    """Under the table: how each VM that should run and does not ended, and its last console
    lines."""
    out = []
    for v in vms:
        if v.state not in ("crashed", "powered off"):
            continue
        when = f" ({ago(time.time() - v.ended_at)})" if v.ended_at else ""
        out.append(f"{v.name} {v.state}: {v.reason}{when}" if v.reason else f"{v.name} {v.state}")
        if v.tail:
            out.append("  last console lines:")
            out += [f"    {line}" for line in v.tail]
        out.append(f"  `ravel start {app} {v.name}` (or publishing again) starts it again")
    return out


def impair_words(doc) -> str:
    return from_doc(doc).words()


def nic_lines(app: str, vms) -> list[str]:  # vms: list[VmStatus]
    """Under the table: NICs whose cable is pulled or whose link is impaired (docs/netem.md)."""
    out = []
    for v in vms:
        for n in v.nics:
            what = []
            if n.get("link") == "down":
                what.append("cable pulled (`ravel link ... up`)")
            if n.get("impair"):
                what.append(f"{impair_words(n['impair'])} ({n.get('impair_source') or 'blueprint'})")
            if what:
                out.append(f"{v.name}:{n['nic']} ({n['network']}): " + "; ".join(what))
    return out


def apps_table(rows, expiries=None) -> Table:  # rows: list[AppHealth]; expiries: app -> Expiry
    t = Table()
    for col in ("app", "provider", "status", "hosts", "VMs", "expires"):
        t.add_column(col)
    for h in rows:
        t.add_row(h.app, h.provider, h.status, str(h.hosts), str(len(h.vm_names)),
                  expires((expiries or {}).get(h.app)))
    return t


def expires(e) -> str:  # e: Expiry | None
    """`in 1h 5m (destroy)`, `expired 3m ago (destroy)`, `-`."""
    if e is None:
        return "-"
    if e.left_s > 0:
        return f"in {approx_duration(e.left_s)} ({e.action})"
    return f"expired {approx_duration(-e.left_s)} ago ({e.action})"



def changes_report(dr) -> Group:  # dr: run.dryrun.DryRun
    """`publish --dry-run`: the changes, then what each host's runtime would do."""
    if not dr.changed:
        parts: list = [f"{dr.app}: no changes; the running app matches {dr.blueprint}"]
    else:
        n = len(dr.changes)
        what = "publishing it would make" if dr.exists else "a new app; publishing it would make"
        t = Table(title=f"{dr.app}: {what} {n} change{'s' if n != 1 else ''}", title_justify="left")
        for col in ("what", "name", "change", "host", "detail"):
            t.add_column(col)
        for c in dr.changes:
            where = f"{c.source} -> {c.host}" if c.source else (c.host or "-")
            t.add_row(c.kind, c.name, c.action, where, c.detail or "-")
        parts = [t]
    for h in dr.hosts:
        lines = [f"  {a['kind']} {a['target']} ({a['reason']})" for a in h.actions]
        lines += [f"  would fail: {p}" for p in h.problems]
        lines += [f"  would send {f}" for f in h.sends]
        if lines:
            parts.append(Text("\n".join([f"{h.name} would do:", *lines])))
    parts += [Text(f"note: {note}") for note in dr.notes]
    return Group(*parts)
