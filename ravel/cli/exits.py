"""The one place where exceptions become exit codes and messages (httpie's ExitStatus idea)."""

from __future__ import annotations

import enum
import functools
import os
import sys
from typing import Any, Callable, TypeVar

import typer

from rich.console import Console

from ..errors import BlueprintError, RavelError

T = TypeVar("T")


class ExitStatus(enum.IntEnum):
    OK = 0
    ERROR = 1
    BAD_INPUT = 2  # blueprint invalid, bad arguments
    PLACEMENT = 3
    PROVIDER = 4
    TRANSPORT = 5
    COMMAND_FAILED = 6
    STATE = 7
    STORE = 8
    ENVIRONMENT = 9
    INTERRUPTED = 130


err_console = Console(stderr=True, highlight=False, soft_wrap=True)


def report(exc: RavelError) -> int:
    for line in exc.lines():
        err_console.print(_prefix(exc, line), markup=False)
    if exc.hint:
        err_console.print(f"hint: {exc.hint}", markup=False)
    return exc.exit_code


def _prefix(exc: RavelError, line: str) -> str:
    # blueprint problems already start with FILE:LINE:COL, like a compiler's; others get "error:"
    return line if isinstance(exc, BlueprintError) else f"error: {line}"


def handled(fn: Callable[..., T]) -> Callable[..., T]:
    """Wrap a command: every known failure becomes its exit status, never a traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> T:
        try:
            return fn(*args, **kwargs)
        except RavelError as exc:
            raise typer.Exit(report(exc)) from None
        except KeyboardInterrupt:
            err_console.print("interrupted", markup=False)
            raise typer.Exit(ExitStatus.INTERRUPTED) from None
        except (typer.Exit, typer.Abort, SystemExit):
            raise
        except typer.BadParameter as exc:  # an argument checked inside a command body
            err_console.print(f"error: {exc.format_message()}", markup=False)
            raise typer.Exit(ExitStatus.BAD_INPUT) from None
        except BrokenPipeError:
            # `ravel plan --json | head` must not print a traceback
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            raise typer.Exit(ExitStatus.OK) from None
        except Exception as exc:  # a bug: say so in one line; RAVEL_DEBUG=1 shows the traceback
            if os.environ.get("RAVEL_DEBUG"):
                raise
            err_console.print(f"internal error: {type(exc).__name__}: {exc}", markup=False)
            err_console.print("hint: this is a bug in ravel; RAVEL_DEBUG=1 shows where", markup=False)
            raise typer.Exit(ExitStatus.ERROR) from None

    return wrapper
