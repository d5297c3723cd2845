"""`ravel` command line: parse, call the library, render, and map errors to exit codes."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import List, Optional

import enum

import typer
from dataclasses import asdict
from rich.console import Console

from .. import __version__
from ..errors import BlueprintError
from ..model.spec import json_schema
from ..plan.catalogue import load_catalogue, providers
from ..plan.fit import check_fit
from ..plan.plan import make_plan
from ..run.blueprints import read_blueprint
from ..errors import StateError
from ..paths import paths
from ..run.console import attach, read_log
from ..run.events import quiet
from ..run.lab import Lab, VmStatus
from . import exits, progress
from .render import apps_table, plan_table, vm_table

app = typer.Typer(
    name="ravel",
    help="Nested virtualization labs: publish a blueprint of VMs and networks onto a few hosts.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)



class Optimize(str, enum.Enum):
    cost = "cost"
    performance = "performance"


def _provider(value: str) -> str:
    if value not in providers():
        raise typer.BadParameter(f"unknown provider {value!r}; choose from {', '.join(providers())}")
    return value


def _version(value: bool) -> None:
    if value:
        out.print(f"ravel {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
) -> None:
    """ravel: nested virtualization labs on public clouds and on your own machine."""


@app.command()
@exits.handled
def validate(
    files: List[Path] = typer.Argument(..., help="Blueprint files to check.", show_default=False),
    provider: str = typer.Option("local", "--provider", "-p", callback=_provider,
                                 help="Check VM sizes against this provider's host types."),
) -> None:
    """Check blueprints and print every problem as FILE:LINE:COL: key: message."""
    problems = []
    for f in files:
        try:
            bp = read_blueprint(str(f))
        except BlueprintError as exc:
            problems.extend(exc.problems)
            continue
        fit = check_fit(bp, load_catalogue(provider))
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
    catalogue = load_catalogue(provider)
    problems = check_fit(bp, catalogue, mode)
    if problems:
        raise BlueprintError(problems)
    p = make_plan(bp, catalogue, mode)
    if as_json:
        sys.stdout.write(json.dumps(p.to_dict(), indent=2) + "\n")
    else:
        out.print(plan_table(p))


@app.command()
def schema() -> None:
    """Print the blueprint format as JSON Schema."""
    sys.stdout.write(json.dumps(json_schema(), indent=2) + "\n")


def _lab(emit: bool = True) -> Lab:
    return Lab(paths(), emit=progress.printer(err) if emit else quiet)


@app.command()
@exits.handled
def publish(
    file: Path = typer.Argument(..., help="Blueprint file.", show_default=False),
    provider: str = typer.Option("local", "--provider", "-p", callback=_provider, help="Where the hosts run."),
    name: Optional[str] = typer.Option(None, "--name", "-n", help="App name (default: the blueprint's name)."),
    wait: bool = typer.Option(False, "--wait", help="Wait until every VM's console says it is ready."),
    timeout: float = typer.Option(600.0, "--timeout", help="Bound on the whole publish, in seconds."),
) -> None:
    """Create the hosts, wire the networks and boot every VM; re-running applies only changes."""
    if name is not None:
        _check_app_name(name)
    lab = _lab()
    try:
        result = lab.publish(str(file), name=name, provider_name=provider, wait=wait, timeout=timeout)
    finally:
        lab.close()
    if result.changed == 0:
        out.print(f"{result.app}: nothing to do, everything is up to date")
    out.print(vm_table(result.app, result.vms))
    if result.ready_s is not None:
        out.print(f"all VMs ready after {result.ready_s:.1f} s")
    out.print(f"console: ravel console {result.app} VM   (detach with Ctrl-])   logs: ravel logs {result.app} VM")


@app.command()
@exits.handled
def status(
    app_name: Optional[str] = typer.Argument(None, metavar="[APP]", help="App (default: all)."),
    as_json: bool = typer.Option(False, "--json", help="Print as JSON."),
) -> None:
    """Each VM's state, host, addresses, accelerator and console."""
    lab = _lab(False)
    try:
        names = [app_name] if app_name else [a.name for a in lab.state.apps()]
        data = {n: lab.status(n) for n in names}
    finally:
        lab.close()
    if as_json:
        sys.stdout.write(json.dumps({n: [asdict(v) for v in vms] for n, vms in data.items()}, indent=2) + "\n")
        return
    if not data:
        out.print("no apps")
    for n, vms in data.items():
        out.print(vm_table(n, vms))


@app.command("list")
@exits.handled
def list_apps(as_json: bool = typer.Option(False, "--json", help="Print as JSON.")) -> None:
    """The apps ravel knows about."""
    lab = _lab(False)
    try:
        rows = [(a, lab.state.hosts(a.name), lab.state.vms(a.name)) for a in lab.state.apps()]
    finally:
        lab.close()
    if as_json:
        sys.stdout.write(json.dumps([{"name": a.name, "provider": a.provider, "status": a.status,
                                      "hosts": len(h), "vms": len(v)} for a, h, v in rows], indent=2) + "\n")
        return
    out.print(apps_table(rows))


@app.command()
@exits.handled
def console(app_name: str = typer.Argument(..., metavar="APP"), vm: str = typer.Argument(..., metavar="VM")) -> None:
    """Attach to a VM's serial console. Detach with Ctrl-] (the key is not sent to the VM)."""
    target = _vm(app_name, vm)
    if sys.stdin.isatty():
        err.print(f"connected to {vm}; detach with Ctrl-]", markup=False)
    attach(target.console, vm)


@app.command()
@exits.handled
def logs(
    app_name: str = typer.Argument(..., metavar="APP"),
    vm: str = typer.Argument(..., metavar="VM"),
    follow: bool = typer.Option(False, "--follow", "-f", help="Keep printing new output."),
) -> None:
    """A VM's serial console output so far (like `docker logs`)."""
    target = _vm(app_name, vm)
    for chunk in read_log(target.log, vm, follow=follow):
        sys.stdout.buffer.write(chunk)
        sys.stdout.buffer.flush()


@app.command()
@exits.handled
def stop(app_name: str = typer.Argument(..., metavar="APP"),
         vms: Optional[List[str]] = typer.Argument(None, metavar="[VM]...")) -> None:
    """Stop an app's VMs (or the ones named); disks are kept."""
    lab = _lab()
    try:
        lab.set_running(app_name, vms or None, False)
    finally:
        lab.close()


@app.command()
@exits.handled
def start(app_name: str = typer.Argument(..., metavar="APP"),
          vms: Optional[List[str]] = typer.Argument(None, metavar="[VM]...")) -> None:
    """Start an app's stopped VMs (or the ones named)."""
    lab = _lab()
    try:
        lab.set_running(app_name, vms or None, True)
    finally:
        lab.close()


@app.command()
@exits.handled
def destroy(
    app_name: str = typer.Argument(..., metavar="APP"),
    yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask for confirmation."),
) -> None:
    """Remove an app: its VMs, disks, networks and hosts. Asks first, on a terminal only."""
    if not yes and sys.stdin.isatty():
        if not typer.confirm(f"destroy {app_name} and delete its disks?", default=False):
            raise typer.Exit(1)
    lab = _lab()
    try:
        n = lab.destroy(app_name)
    finally:
        lab.close()
    out.print(f"{app_name}: destroyed ({n} host{'s' if n != 1 else ''} removed)")


def _vm(app_name: str, vm: str) -> VmStatus:
    lab = _lab(False)
    try:
        vms = lab.status(app_name)
    finally:
        lab.close()
    for v in vms:
        if v.name == vm:
            return v
    raise StateError(f"app {app_name!r} has no VM {vm!r} (VMs: {', '.join(v.name for v in vms)})")


def _check_app_name(name: str) -> None:
    import re

    from ..model.spec import NAME_RE

    if not re.match(NAME_RE, name):
        raise typer.BadParameter(f"{name!r} is not a valid app name: lowercase letters, digits and dashes")


def main() -> None:
    app(prog_name="ravel")
