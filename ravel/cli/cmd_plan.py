"""`ravel validate`, `ravel plan`, `ravel schema`: the pure core, from the command line."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import List, Optional

import typer

from ..errors import BlueprintError
from ..model.spec import json_schema
from ..plan.fit import check_fit
from ..plan.plan import make_plan
from ..paths import paths
from ..run.blueprints import read_blueprint
from ..run.capacity import admit_local, catalogue_for
from ..run.preflight import check_files
from . import exits
from .common import Optimize, app, out, provider_option
from .render import plan_table

_provider = provider_option


@app.command()
@exits.handled
def validate(
    files: List[Path] = typer.Argument(..., help="Blueprint files to check.", show_default=False),
    provider: Optional[str] = typer.Option(
        None, "--provider", "-p", callback=lambda v: v and _provider(v),
        help="Also check that every VM fits one of this provider's host types (local: sized from "
             "this machine). Without it, only the blueprint itself is checked."),
) -> None:
    """Check blueprints and print every problem as FILE:LINE:COL: key: message."""
    problems = []
    catalogue = catalogue_for(provider) if provider else None
    for f in files:
        try:
            bp = read_blueprint(str(f))
        except BlueprintError as exc:
            problems.extend(exc.problems)
            continue
        fit = check_fit(bp, catalogue) if catalogue else []
        try:
            check_files(bp)  # images, ISOs, kernels: there, readable, what they claim to be
        except BlueprintError as exc:
            fit = [*fit, *exc.problems]
        if fit:
            problems.extend(fit)
        else:
            out.print(f"{f}: ok ({len(bp.vms)} VMs, {len(bp.networks)} networks)")
    if problems:
        raise BlueprintError(problems)


@app.command()
@exits.handled
def plan(
    file: Path = typer.Argument(..., help="Blueprint file.", show_default=False),
    provider: str = typer.Option("local", "--provider", "-p", callback=_provider, help="Where the hosts would run."),
    optimize: Optional[Optimize] = typer.Option(None, "--optimize", help="Override the blueprint's placement.optimize."),
    as_json: bool = typer.Option(False, "--json", help="Print the plan as JSON."),
) -> None:
    """Show which hosts would run the blueprint, which VM goes where, and the hourly cost."""
    mode = optimize.value if optimize else None
    bp = read_blueprint(str(file))
    catalogue = catalogue_for(provider)
    problems = check_fit(bp, catalogue, mode)
    if problems:
        raise BlueprintError(problems)
    p = make_plan(bp, catalogue, mode)
    if provider == "local":  # what `publish` would refuse, refused here first
        admit_local(paths(), bp.name, p)
    if as_json:
        sys.stdout.write(json.dumps(p.to_dict(), indent=2) + "\n")
    else:
        out.print(plan_table(p))


@app.command()
def schema() -> None:
    """Print the blueprint format as JSON Schema."""
    sys.stdout.write(json.dumps(json_schema(), indent=2) + "\n")


