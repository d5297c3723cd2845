"""Tables and text for the terminal; no decisions are made here."""

from __future__ import annotations

from rich.table import Table

from ..model.units import format_mib
from ..plan.plan import Plan


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
    for h in p.hosts:
        t.add_row(h.name, h.type.name, str(h.type.cpus), format_mib(h.type.memory_mib), h.accel,
                  money(h.type.hourly_cost), ", ".join(h.vms))
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
    lines += [f"note: {n}" for n in plan.notes()]
    t.caption = "\n".join(lines)
    t.caption_justify = "left"
    return t


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


def apps_table(rows) -> Table:  # rows: list[(AppRecord, hosts, vms)]
    t = Table()
    for col in ("app", "provider", "status", "hosts", "VMs"):
        t.add_column(col)
    for a, hosts, vms in rows:
        t.add_row(a.name, a.provider, a.status, str(len(hosts)), str(len(vms)))
    return t
