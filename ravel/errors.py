"""One exception tree for everything ravel reports to a user.

Every error carries a one-line ``message`` and an optional ``hint``; the CLI turns them into
exit codes in one place (``ravel.cli.exits``), so no library code prints or exits.
"""

from __future__ import annotations

from dataclasses import dataclass


class RavelError(Exception):
    """Base of every error meant for the user (never shown with a traceback)."""

    exit_code = 1

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def lines(self) -> list[str]:
        return [self.message]

    def plain(self, prefix: str = "error: ") -> str:
        """What the CLI prints for it, as plain text: for the commands that start without the
        CLI's libraries (cli/launch.py)."""
        return "".join(f"{prefix}{line}\n" for line in self.lines()) + (f"hint: {self.hint}\n" if self.hint else "")


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a blueprint, located as precisely as the input allows."""

    file: str
    line: int  # 1-based; 0 when unknown
    column: int  # 1-based; 0 when unknown
    path: str  # dotted key path, e.g. "vms.web.nics[0].network"; "" for the whole document
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}:{self.column}" if self.line else self.file
        return f"{where}: {self.path}: {self.message}" if self.path else f"{where}: {self.message}"


class BlueprintError(RavelError):
    """The blueprint is not valid; carries every problem found, not only the first."""

    exit_code = 2

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = sorted(problems, key=lambda p: (p.file, p.line, p.column, p.path, p.message))
        n = len(self.problems)
        super().__init__(f"{n} problem{'s' if n != 1 else ''} in blueprint")

    def lines(self) -> list[str]:
        return [str(p) for p in self.problems]


class PlacementError(RavelError):
    """The planner cannot place a VM; names the VM, the resource that ran out and the nearest fit."""

    exit_code = 3

    def __init__(
        self,
        message: str,
        vm: str | None = None,
        dimension: str | None = None,
        nearest: str | None = None,
        hint: str | None = None,
    ) -> None:
        super().__init__(message, hint)
        self.vm = vm
        self.dimension = dimension
        self.nearest = nearest


class ProviderError(RavelError):
    """A provider (local namespaces, AWS, GCP) could not create, find or remove a host."""

    exit_code = 4


class TransportError(RavelError):
    """A host could not be reached (namespace missing, SSH refused, host key mismatch...)."""

    exit_code = 5


class HostKeyMismatch(TransportError):
    """A host presented another SSH host key than the one ravel installed on it: refused at
    once and never retried (a retry could only reach the same impostor)."""


class MissingFile(TransportError):
    """A file asked of a host is not there (the host itself answered)."""


class CommandFailed(RavelError):
    """A command on a host exited non-zero."""

    exit_code = 6

    def __init__(self, host: str, argv: list[str] | str, rc: int, stderr: str) -> None:
        cmd = argv if isinstance(argv, str) else " ".join(argv)
        tail = stderr.strip().splitlines()[-1] if stderr.strip() else "no error output"
        super().__init__(f"{host}: `{cmd}` failed with exit status {rc}: {tail}")
        self.host = host
        self.rc = rc
        self.stderr = stderr


class StateError(RavelError):
    """The local state database disagrees with a request (unknown app, app locked...)."""

    exit_code = 7


class StateDamaged(StateError):
    """The state database cannot be read (damaged, emptied, or not a database): every command
    says so, naming the file and the way out, instead of failing deep inside SQLite."""


class StoreError(RavelError):
    """The image/snapshot store is missing a layer, or a layer does not match its hash."""

    exit_code = 8


class EnvironmentProblem(RavelError):
    """This machine lacks something ravel needs (root, QEMU, kernel features)."""

    exit_code = 9
