"""`ravel doctor`: what this machine lacks of what ravel needs, whether the state is sound, and
the command that fixes each; `--repair-state` rebuilds the state."""

from __future__ import annotations

import json
import sys

import typer

from ..errors import RavelError
from ..run.checks import Check, missing, report
from ..run.doctor import state_line
from . import exits
from .common import app, out
from .common import lab as open_lab

MARKS = {(True, True): "ok", (True, False): "ok", (False, True): "MISSING", (False, False): "warning"}


@app.command()
@exits.handled
def doctor(
    repair_state: bool = typer.Option(
        False, "--repair-state",
        help="Rebuild a damaged or lost state from what still reads in it, from each app's backup "
             "and from the hosts (namespaces, QEMU processes, run and data directories). The "
             "damaged database is kept aside; nothing on the hosts is changed."),
    as_json: bool = typer.Option(False, "--json", help="Print the checks as one JSON document."),
) -> None:
    """Check this machine for what ravel needs (exit 9 when something required is missing; KVM
    is not: VMs fall back to TCG) and the state (exit 7 when it needs repair)."""
    lab = open_lab(False, check_lost=False)
    try:
        if repair_state:
            result = lab.repair_state()
            for line in result.lines:
                out.print(line, markup=False)
            out.print(f"the state knows {len(result.apps)} app{'s' if len(result.apps) != 1 else ''}"
                      + (f": {', '.join(result.apps)}" if result.apps else ""), markup=False)
            return
        checks = lab.check_machine()
        try:
            state = lab.check_state()
            checks.append(state_line(state))
        except RavelError as exc:  # a state that cannot even be opened is a finding, not a crash
            state = None
            checks.append(Check("state", False, True, exc.message, exc.hint or "ravel doctor --repair-state"))
    finally:
        lab.close()
    if as_json:
        sys.stdout.write(json.dumps(report(checks), indent=2) + "\n")
    else:
        for c in checks[:-1]:
            out.print(_line(c), markup=False)
        _print_state(state, checks[-1])
    raise typer.Exit(exits.doctor_status([c.name for c in missing(checks)]))


def _line(c: Check) -> str:
    fix = f"  -> {c.fix}" if c.fix and not c.ok else ""
    return f"{MARKS[c.ok, c.required]:<8} {c.name:<13} {c.detail}{fix}"


def _print_state(check, line: Check) -> None:
    """The state's part in the words ravel uses elsewhere (damaged, lost apps, `--repair-state`)."""
    if check is None:
        out.print(_line(line), markup=False)
        return
    out.print(f"state: {check.path}", markup=False)
    for problem in check.problems:
        out.print(f"  damaged: {problem}", markup=False)
    if check.lost:
        out.print(f"  lost apps (they have backups): {', '.join(check.lost)}", markup=False)
    if check.unknown:
        out.print(f"  apps on this machine's hosts the state does not know: {', '.join(check.unknown)}",
                  markup=False)
    if check.sound:
        out.print(f"  sound: {len(check.apps)} app{'s' if len(check.apps) != 1 else ''}, "
                  f"{len(check.backups)} backed up", markup=False)
    else:
        out.print("  `ravel doctor --repair-state` rebuilds it", markup=False)
