"""Bytes between two ends until both directions are done, each end closing its writing side
when the other's reading side ends (so a copy through `ravel proxy` ends like a direct one)."""

from __future__ import annotations

import os
import select
from typing import Protocol

CHUNK = 1 << 18


class End(Protocol):
    def fileno(self) -> int: ...
    def recv(self, size: int) -> bytes: ...
    def sendall(self, data: bytes) -> None: ...
    def end_write(self) -> None: ...


class Fds:
    """This process's stdin and stdout (or any two descriptors) as one end."""

    def __init__(self, read_fd: int, write_fd: int) -> None:
        self.read_fd, self.write_fd = read_fd, write_fd

    def fileno(self) -> int:
        return self.read_fd

    def recv(self, size: int) -> bytes:
        return os.read(self.read_fd, size)

    def sendall(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(self.write_fd, view):]

    def end_write(self) -> None:
        try:
            os.close(self.write_fd)
        except OSError:
            pass


def pump(a: End, b: End) -> None:
    """Relay until both directions have ended; an error on either end ends the relay."""
    open_from = {a: b, b: a}  # reading side still open -> where its bytes go
    try:
        while open_from:
            ready, _, _ = select.select(list(open_from), [], [])
            for src in ready:
                data = src.recv(CHUNK)
                dst = open_from[src]
                if not data:
                    del open_from[src]
                    dst.end_write()
                    continue
                dst.sendall(data)
    except (OSError, EOFError):
        return
