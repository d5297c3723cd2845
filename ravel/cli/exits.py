"""The one place where exceptions become exit codes and messages (httpie's ExitStatus idea).

With `--json`, the same failure is also one document on stdout, `{"error": {"code": N,
"message": ..., "hint": ...}}` (docs/json.md), and the exit status is the same: a script reads
either, and the human lines still go to stderr for the CI log."""

from __future__ import annotations

import enum
import functools
import json
import os
import sys
from dataclasses import asdict
from typing import Any, Callable, Sequence, TypeVar

import typer

from rich.console import Console

from ..errors import BlueprintError, RavelError

T = TypeVar("T")

# click's exceptions as this typer raises them (typer >= 0.20 carries its own copy of click,
# whose classes are not the `click` package's): found from typer's own BadParameter
_CLICK = sys.modules[typer.BadParameter.__module__]
UsageError = _CLICK.UsageError  # raise it for a bad argument found in a command's body: exit 2


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
    CHANGES = 10  # `publish --dry-run`: a publish would change something (CI drift checks)
    INTERRUPTED = 130


def doctor_status(missing: list[str]) -> ExitStatus:
    """`ravel doctor`, from the names of the required checks that failed: the machine lacking
    something comes first (nothing works without it), then a state that needs repair."""
    if any(name != "state" for name in missing):
        return ExitStatus.ENVIRONMENT
    return ExitStatus.STATE if missing else ExitStatus.OK


err_console = Console(stderr=True, highlight=False, soft_wrap=True)


def wants_json(argv: Sequence[str]) -> bool:
    """`--json` among ravel's own arguments (not after `--`, which belongs to a guest command)."""
    for arg in argv:
        if arg == "--":
            return False
        if arg == "--json":
            return True
    return False


def error_document(code: int, message: str, hint: str | None = None, **more: Any) -> dict[str, Any]:
    return {"error": {"code": int(code), "message": message, "hint": hint, **more}}


def write_error(doc: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(doc, indent=2) + "\n")
    sys.stdout.flush()


def _document_of(exc: RavelError) -> dict[str, Any]:
    more: dict[str, Any] = {"kind": type(exc).__name__}
    if isinstance(exc, BlueprintError):
        more["problems"] = [asdict(p) for p in exc.problems]
    return error_document(exc.exit_code, exc.message, exc.hint, **more)


def report(exc: RavelError, as_json: bool = False) -> int:
    for line in exc.lines():
        err_console.print(_prefix(exc, line), markup=False)
    if exc.hint:
        err_console.print(f"hint: {exc.hint}", markup=False)
    if as_json:
        write_error(_document_of(exc))
    return exc.exit_code


def _say(code: int, message: str, hint: str | None, as_json: bool, kind: str,
         prefix: str = "error: ") -> int:
    """A failure that is not a RavelError, in the same two forms."""
    err_console.print(prefix + message, markup=False)
    if hint:
        err_console.print(f"hint: {hint}", markup=False)
    if as_json:
        write_error(error_document(code, message, hint, kind=kind))
    return code


def _prefix(exc: RavelError, line: str) -> str:
    # blueprint problems already start with FILE:LINE:COL, like a compiler's; others get "error:"
    return line if isinstance(exc, BlueprintError) else f"error: {line}"


def handled(fn: Callable[..., T]) -> Callable[..., T]:
    """Wrap a command: every known failure becomes its exit status, never a traceback; with
    `--json` (the command's `as_json` parameter) also an error document on stdout."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> T:
        as_json = bool(kwargs.get("as_json"))
        try:
            return fn(*args, **kwargs)
        except RavelError as exc:
            raise typer.Exit(report(exc, as_json)) from None
        except KeyboardInterrupt:
            raise typer.Exit(_say(ExitStatus.INTERRUPTED, "interrupted", None, as_json, "interrupted", "")) from None
        except (typer.Exit, typer.Abort, SystemExit):
            raise
        except UsageError as exc:  # an argument checked inside a command body (BadParameter too)
            raise typer.Exit(_say(ExitStatus.BAD_INPUT, exc.format_message(), None, as_json, "usage")) from None
        except BrokenPipeError:
            # `ravel plan --json | head` must not print a traceback
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            raise typer.Exit(ExitStatus.OK) from None
        except Exception as exc:  # a bug: say so in one line; RAVEL_DEBUG=1 shows the traceback
            if os.environ.get("RAVEL_DEBUG"):
                raise
            raise typer.Exit(_say(ExitStatus.ERROR, f"{type(exc).__name__}: {exc}",
                                  "this is a bug in ravel; RAVEL_DEBUG=1 shows where", as_json, "bug",
                                  "internal error: ")) from None

    return wrapper


def run_json(call: Callable[[], Any]) -> int:
    """Run the CLI for a `--json` command line: what click itself refuses (an unknown option, a
    bad value, a missing argument) becomes an error document too, with click's exit status."""
    try:
        rv = call()
    except _CLICK.ClickException as exc:
        ctx = getattr(exc, "ctx", None)
        hint = f"see `{ctx.command_path} --help`" if ctx is not None else None
        return _say(exc.exit_code, exc.format_message(), hint, True, "usage")
    except typer.Abort:
        return _say(ExitStatus.ERROR, "aborted", None, True, "aborted")
    return rv if isinstance(rv, int) else ExitStatus.OK
