"""Cloud housekeeping: `ravel gc` removes what ravel made on a cloud for apps the state no
longer knows."""

from __future__ import annotations

import sys

import typer

from ..paths import paths
from ..run import gc as gc_run
from . import documents, exits
from .common import app, err, out

CLOUDS = ("aws", "gcp")


def _cloud(value: str) -> str:
    if value not in CLOUDS:
        raise typer.BadParameter(f"{value!r} is not a cloud provider; choose from {', '.join(CLOUDS)}")
    return value


@app.command()
@exits.handled
def gc(
    provider: str = typer.Option(..., "--provider", "-p", callback=_cloud, help="aws or gcp."),
    dry_run: bool = typer.Option(False, "--dry-run", "-n", help="Only list what would be removed."),
    any_state: bool = typer.Option(
        False, "--any-state",
        help="Also resources made by other ravel set-ups (other RAVEL_HOMEs) in this account."),
    yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask for confirmation."),
    as_json: bool = typer.Option(False, "--json", help="Print what was (or would be) removed as JSON."),
) -> None:
    """Remove instances, security groups/firewalls and keys ravel made for apps this state no
    longer knows (tagged or labelled by ravel). Apps the state knows are never touched."""
    where = paths()
    found = gc_run.garbage(where, provider, any_state)
    if not found or dry_run:
        if as_json:
            documents.write({"provider": provider, "dry_run": dry_run, "resources": found})
            return
        if not found:
            out.print(f"{provider}: nothing to collect")
        for line in found:
            out.print(f"would remove {line}")
        return
    if not yes and sys.stdin.isatty():
        for line in found:
            (err if as_json else out).print(f"  {line}", markup=False)
        if not typer.confirm(f"remove these {len(found)} resources?", default=False, err=as_json):
            raise typer.Exit(1)
    removed = gc_run.collect(where, provider, any_state)
    if as_json:
        documents.write({"provider": provider, "dry_run": False, "resources": removed})
        return
    for line in removed:
        out.print(f"removed {line}")
