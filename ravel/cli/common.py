"""Shared pieces of the CLI: the Typer app, consoles, common options."""

from __future__ import annotations

import enum

import typer
from rich.console import Console

from .. import __version__
from ..paths import paths
from ..plan.catalogue import providers
from ..events import quiet
from ..run.lab import Lab
from . import progress

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


def lab(emit: bool = True) -> Lab:
    """The library entry point for lab commands, with progress on stderr unless `emit` is off."""
    return Lab(paths(), emit=progress.printer(err) if emit else quiet)


def _version(value: bool) -> None:
    if value:
        out.print(f"ravel {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
) -> None:
    """ravel: nested virtualization labs on public clouds and on your own machine."""
