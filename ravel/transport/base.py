"""How a host is reached: run a command, talk to one while it runs (a stream), put a file, get
a file, read a file's bytes. Quoting lives in transports."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import (BinaryIO, Callable, ContextManager, Iterator, Protocol, Sequence,
                    runtime_checkable)

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


@runtime_checkable
class CommandStream(Protocol):
    """A command running on a host, connected both ways: its stdin, stdout and stderr as bytes
    (from `Transport.stream`). Read stdout either with `recv` (after `select` on `fileno`: the
    interactive console relay) or with `lines` (a line protocol), not both."""

    def fileno(self) -> int:
        """For select(): readable when `recv` has stdout bytes (or the end) to give."""

    def recv(self, size: int) -> bytes:
        """Up to `size` bytes of stdout, waiting for some; b"" once stdout has ended."""

    def lines(self) -> Iterator[bytes]:
        """Each line of stdout (with its newline, the last one maybe without), until it ends."""

    def sendall(self, data: bytes) -> None:
        """Write all of `data` to the command's stdin (OSError or EOFError when it is gone)."""

    def shutdown_write(self) -> None:
        """End the command's stdin; fine when the command has already exited."""

    def stderr(self, timeout: float) -> bytes:
        """What the command wrote to stderr: all of it once it has ended, else what arrived
        within `timeout` seconds. Asked after stdout ended, it waits for the rest."""

    def wait(self, timeout: float) -> int | None:
        """The command's exit status, waiting at most `timeout` seconds; None while it still
        runs. Negative when it ended without one (killed by a signal)."""

    def close(self) -> None:
        """Hang up: the command loses its stdin, stdout and stderr, so one that reads or writes
        them ends (a process here that is still running is also sent SIGTERM, then SIGKILL).
        Idempotent."""


@runtime_checkable
class Conn(Protocol):
    """A TCP connection made from a host (a socket, or an SSH channel): what `ravel ssh`,
    `ravel proxy` and `ravel cp` speak to a guest over. Both kinds have these, with socket
    semantics (`shutdown(1)` ends writing)."""

    def fileno(self) -> int: ...
    def recv(self, size: int) -> bytes: ...
    def send(self, data: bytes) -> int: ...
    def sendall(self, data: bytes) -> None: ...
    def settimeout(self, timeout: float | None) -> None: ...
    def shutdown(self, how: int) -> None: ...
    def close(self) -> None: ...


@runtime_checkable
class Transport(Protocol):
    """Failures to reach the host raise TransportError (naming the host); a command that runs
    and exits non-zero raises CommandFailed when `check` is set."""

    host: str  # the name used in messages
    # True when the host sees this machine's files: a path means the same file on both, so a
    # file is handed over by its name. False promises nothing: files go through put/get/read.
    is_local: bool

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

    def stream(self, argv: Sequence[str], timeout: float = 60) -> CommandStream:
        """Start argv on the host (arguments exactly as given) and connect to it both ways;
        `timeout` bounds starting it, not its run. TransportError (naming the host) when it
        cannot be started; a program that is not there is a command that exits non-zero."""

    def connect(self, address: str, port: int, timeout: float = 10) -> Conn:
        """A TCP connection from the host to `address:port` (a guest on one of its bridges),
        carried to this machine: the guest is never exposed outside its host for it.
        TransportError naming the host and the address when it cannot be made."""

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


def split_lines(recv: Callable[[int], bytes], size: int = 1 << 16) -> Iterator[bytes]:
    """The lines of a byte stream read with `recv` (b"" at its end), newlines kept; a last line
    without a newline comes last."""
    buf = bytearray()
    while True:
        chunk = recv(size)
        if not chunk:
            if buf:
                yield bytes(buf)
            return
        start = len(buf)
        buf += chunk
        cut = 0
        while (nl := buf.find(b"\n", max(start, cut))) >= 0:
            yield bytes(buf[cut:nl + 1])
            cut = nl + 1
        del buf[:cut]
