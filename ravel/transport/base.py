"""How a host is reached: run a command, put a file, get a file, read a file's bytes. Quoting
lives in transports."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, ContextManager, Protocol, Sequence, runtime_checkable

from .copying import Blocks

READ_LIMIT = 1 << 20  # one read: a console log is followed in pieces of at most this


@dataclass(frozen=True)
class CommandResult:
    rc: int
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        return self.rc == 0


class Transport(Protocol):
    """Failures to reach the host raise TransportError (naming the host); a command that runs
    and exits non-zero raises CommandFailed when `check` is set."""

    host: str  # the name used in messages
    local: bool  # True when the host sees this machine's files (paths mean the same on both)

    def run(self, argv: Sequence[str], input: bytes | None = None, timeout: float = 120,
            check: bool = True) -> CommandResult:
        """Run argv (never a shell string: arguments arrive exactly as given); `timeout` bounds
        the whole call. Without `input` the command reads an empty stdin."""

    def put(self, local: Path, remote: str, mode: int = 0o644) -> None:
        """Copy a file onto the host atomically, making its directory; then chmod `mode`."""

    def get(self, remote: str, local: Path) -> None:
        """Copy a file from the host, keeping its permission bits."""

    def read(self, remote: str, offset: int = 0, limit: int = READ_LIMIT) -> bytes:
        """Up to `limit` bytes of a file on the host from byte `offset`, exactly as stored (never
        decoded); b"" at or past its end. A file that is not there raises MissingFile."""

    def close(self) -> None:
        """Let go of any connection; the transport reconnects if used again."""


@runtime_checkable
class Streaming(Protocol):
    """A transport that also streams files (SSH): bytes pass through this machine without
    landing in a file here, so a copy between two hosts runs as fast as the slower of them."""

    def reading(self, remote: str) -> ContextManager[Blocks]:
        """The file's bytes in blocks, its size and mode (MissingFile when it is not there)."""

    def writing(self, remote: str, mode: int = 0o644) -> ContextManager[BinaryIO]:
        """A writable file that takes the name `remote` (and `mode`) only when the block ends
        without error; a temporary name until then, removed on error."""
