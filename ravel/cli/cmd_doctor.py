"""`ravel doctor`: what is wrong with this set-up and how to fix it; for now, the state."""

from __future__ import annotations

import typer

from . import exits
from .common import app, out
from .common import lab as open_lab


@app.command()
@exits.handled
def doctor(
    repair_state: bool = typer.Option(
        False, "--repair-state",
        help="Rebuild a damaged or lost state from what still reads in it, from each app's backup "
             "and from the hosts (namespaces, QEMU processes, run and data directories). The "
             "damaged database is kept aside; nothing on the hosts is changed."),
) -> None:
    """Check this machine's ravel set-up; with --repair-state, rebuild the state."""
    lab = open_lab(False, check_lost=False)
    try:
        if repair_state:
            result = lab.repair_state()
            for line in result.lines:
                out.print(line, markup=False)
            out.print(f"the state knows {len(result.apps)} app{'s' if len(result.apps) != 1 else ''}"
                      + (f": {', '.join(result.apps)}" if result.apps else ""), markup=False)
            return
        check = lab.check_state()
    finally:
        lab.close()
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
        return
    out.print("  `ravel doctor --repair-state` rebuilds it", markup=False)
    raise typer.Exit(exits.ExitStatus.STATE)
