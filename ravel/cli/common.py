"""Shared pieces of the CLI: the Typer app, consoles, common options."""

from __future__ import annotations

import enum
from typing import TYPE_CHECKING, Optional

import typer
from rich.console import Console

from .. import __version__
from ..model.durations import parse_duration
from ..paths import paths
from ..plan.catalogue import providers
from ..events import quiet
from . import progress

if TYPE_CHECKING:  # loaded when a command opens a lab: `ravel cp` needs a context only
    from ..run.lab import Lab
    from ..run.sessions import Context

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


def provider_option(value: str) -> str:
    if value not in providers():
        raise typer.BadParameter(f"unknown provider {value!r}; choose from {', '.join(providers())}")
    return value


def ttl_option(value: Optional[str]) -> Optional[int]:
    """--ttl 2h -> seconds (typer.BadParameter, exit 2, for anything else)."""
    if value is None:
        return None
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None


def budget_option(value: Optional[float]) -> Optional[float]:
    if value is not None and value <= 0:
        raise typer.BadParameter(f"a budget must be positive, got {value}")
    return value


TTL_HELP = ("Destroy the app this long after it is published (20s, 90m, 2h, 1d), with no ravel process "
            "needed: a reaper here, the hosts' own timer on aws, maxRunDuration on gcp.")
BUDGET_HELP = "Spend at most this much: the plan's cost per hour turned into a lifetime (the smaller wins)."


def lab(emit: bool = True, check_lost: bool = True) -> Lab:
    """The library entry point for lab commands, with progress on stderr unless `emit` is off;
    `check_lost=False` only for the commands that work on a damaged state."""
    from ..run.lab import Lab

    return Lab(paths(), emit=progress.printer(err) if emit else quiet, check_lost=check_lost)


def context() -> Context:
    """What the ways into the guests need (where ravel keeps its files, the state, the hosts'
    sessions), without the lab's pipeline; close it when done."""
    from ..run.sessions import Context

    return Context(paths())


def _version(value: bool) -> None:
    if value:
        out.print(f"ravel {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
) -> None:
    """ravel: nested virtualization labs on public clouds and on your own machine."""
