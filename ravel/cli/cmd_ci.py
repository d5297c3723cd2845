"""`ravel run`: a lab for one CI job (ravel/ci)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import List, Optional

import typer

from ..ci.pipeline import RunOptions, publish_line, run
from ..run.lifetime import LifetimeRequest
from . import documents, exits
from .common import BUDGET_HELP, TTL_HELP, app, budget_option, err, provider_option, ttl_option
from .common import lab as open_lab


@app.command("run")
@exits.handled
def run_cmd(
    file: Path = typer.Argument(..., help="Blueprint file.", show_default=False),
    command: List[str] = typer.Argument(..., metavar="-- COMMAND...", show_default=False),
    name: Optional[str] = typer.Option(None, "--name", "-n",
                                       help="App name (default: the blueprint's name and a random suffix)."),
    provider: str = typer.Option("local", "--provider", "-p", callback=provider_option, help="Where the hosts run."),
    snapshot_on_failure: bool = typer.Option(False, "--snapshot-on-failure",
                                             help="On failure, snapshot the app (APP-failed-UTCSTAMP) before it goes."),
    memory: bool = typer.Option(False, "--memory", help="With --snapshot-on-failure: save the VMs' memory too."),
    keep_on_failure: bool = typer.Option(False, "--keep-on-failure", help="On failure, keep the app running."),
    store: Optional[str] = typer.Option(None, "--store", help="Store for the failure snapshot (default: the local store)."),
    junit: Optional[Path] = typer.Option(None, "--junit", metavar="FILE",
                                         help="Write a JUnit XML report: one test case per phase."),
    timeout: Optional[float] = typer.Option(None, "--timeout", metavar="S", min=0.001,
                                            help="Seconds COMMAND may run; then it is ended and the run fails (124)."),
    publish_timeout: float = typer.Option(600.0, "--publish-timeout", metavar="S",
                                          help="Bound on publishing and waiting until every VM is ready."),
    ttl: Optional[str] = typer.Option(None, "--ttl", metavar="DURATION", help=TTL_HELP),
    budget: Optional[float] = typer.Option(None, "--budget", metavar="AMOUNT", callback=budget_option, help=BUDGET_HELP),
    as_json: bool = typer.Option(False, "--json",
                                 help="Print the run (phases, status, snapshot) as JSON; COMMAND's stdout then "
                                      "goes to stderr."),
) -> None:
    """Publish FILE, wait until it is ready, run COMMAND here with RAVEL_APP, RAVEL_SSH_CONFIG and
    RAVEL_INVENTORY set, then destroy the app. On failure, snapshot it first (--snapshot-on-failure)
    or keep it (--keep-on-failure). The exit status is COMMAND's own, or ravel's when ravel failed."""
    if memory and not snapshot_on_failure:
        raise typer.BadParameter("--memory goes with --snapshot-on-failure")
    opts = RunOptions(str(file), list(command), name=name, provider=provider, snapshot_on_failure=snapshot_on_failure,
                      memory=memory, keep_on_failure=keep_on_failure, store=store, junit=junit, timeout=timeout,
                      publish_timeout=publish_timeout, lifetime=LifetimeRequest(ttl_option(ttl), budget),
                      command_stdout=sys.stderr.fileno() if as_json else None)
    lab = open_lab()
    try:
        result = run(lab, opts, lambda line: err.print(line, markup=False))
    finally:
        lab.close()
    for line in result.messages:
        err.print(f"error: {line}", markup=False)
    if as_json:  # the exit status is the document's `status`, as without --json
        documents.write(documents.ran(result, publish_line(result.snapshot, opts) if result.snapshot else None))
    raise typer.Exit(result.status)
