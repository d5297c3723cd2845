"""A VM's serial console: the interactive relay and the log reader behind `ravel console/logs`."""

from __future__ import annotations

import os
import select
import socket
import sys
import termios
import time
import tty
from typing import BinaryIO, Callable, Iterator

from ..errors import StateError
from ..transport.base import CommandStream

DETACH = b"\x1d"  # Ctrl-], as in telnet and virsh console
FOLLOW_POLL_S = 0.2


def attach(socket_path: str, vm: str, stdin: int | None = None, stdout: BinaryIO | None = None,
           idle_timeout: float | None = None, on_attached: Callable[[], None] = lambda: None) -> None:
    """Relay the terminal to the VM's serial socket until Ctrl-] (or end of input)."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.connect(socket_path)
    except (FileNotFoundError, ConnectionRefusedError):
        raise StateError(f"the console of {vm} is not available (is the VM running?)") from None
    on_attached()
    relay(s, stdin, stdout, idle_timeout)


def relay(s: socket.socket | CommandStream, stdin: int | None = None, stdout: BinaryIO | None = None,
          idle_timeout: float | None = None) -> None:
    """Relay the terminal to a connection (a UNIX socket, or a stream to the host runtime's
    console relay on a host reached through its transport) until Ctrl-] or the end of either
    side."""
    stdin = sys.stdin.fileno() if stdin is None else stdin
    out = stdout or sys.stdout.buffer
    saved = None
    if os.isatty(stdin):
        saved = termios.tcgetattr(stdin)
        tty.setraw(stdin)
    last = time.monotonic()
    try:
        while True:
            ready, _, _ = select.select([s, stdin], [], [], 0.5)
            if not ready:
                if idle_timeout is not None and time.monotonic() - last > idle_timeout:
                    return
                continue
            last = time.monotonic()
            if s in ready:
                data = s.recv(65536)
                if not data:
                    return
                out.write(data)
                out.flush()
            if stdin in ready:
                data = os.read(stdin, 4096)
                if not data:
                    return
                if DETACH in data:
                    data = data.split(DETACH, 1)[0]
                    if data:
                        s.sendall(data)
                    return
                s.sendall(data)
    finally:
        if saved is not None:
            termios.tcsetattr(stdin, termios.TCSADRAIN, saved)
        s.close()


def read_log(path: str, vm: str, follow: bool = False, max_s: float | None = None) -> Iterator[bytes]:
    """The console output so far; with `follow`, then whatever arrives (bounded by `max_s`)."""
    try:
        fh = open(path, "rb")
    except FileNotFoundError:
        raise StateError(f"{vm} has no console output yet") from None
    with fh:
        while chunk := fh.read(65536):
            yield chunk
        deadline = None if max_s is None else time.monotonic() + max_s
        while follow and (deadline is None or time.monotonic() < deadline):
            chunk = fh.read(65536)
            if chunk:
                yield chunk
            else:
                time.sleep(FOLLOW_POLL_S)
