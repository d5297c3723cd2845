"""A connection to a guest, always through its host: a TCP port of the guest (made from the
host by its transport), or one of the VM's unix sockets on the host (the guest agent's channel,
the VNC console): directly when the host shares this machine's files, else relayed by the host
runtime over the transport."""

from __future__ import annotations

import socket

from ..errors import StateError
from ..run.sessions import Context
from ..transport.base import CommandStream, Conn
from .guest import Guest

CONNECT_S = 10.0


class Link:
    """Either end of a relay: a socket, an SSH channel or a host command's stream, with one
    way to say "nothing more from me" (`end_write`) and to hang up."""

    def __init__(self, inner: Conn | CommandStream) -> None:
        self.inner = inner

    def fileno(self) -> int:
        return self.inner.fileno()

    def recv(self, size: int) -> bytes:
        return self.inner.recv(size)

    def sendall(self, data: bytes) -> None:
        self.inner.sendall(data)

    def end_write(self) -> None:
        try:
            if isinstance(self.inner, CommandStream):
                self.inner.shutdown_write()
            else:
                self.inner.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def settimeout(self, timeout: float | None) -> None:
        if not isinstance(self.inner, CommandStream):
            self.inner.settimeout(timeout)

    def close(self) -> None:
        self.inner.close()


def tcp(ctx: Context, g: Guest, port: int, timeout: float = CONNECT_S) -> Conn:
    """A TCP connection to the guest's `port` at the address ravel gave it."""
    if g.address is None:
        raise StateError(f"VM {g.vm} of app {g.app!r} has no address ravel knows")
    return ctx.hosts.transport(g.provider, g.host).connect(g.address, port, timeout)


def unix(ctx: Context, g: Guest, path: str, what: str) -> Link:
    """A connection to one of the VM's unix sockets on its host (`what` names it in errors)."""
    t = ctx.hosts.transport(g.provider, g.host)
    if t.is_local:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            s.connect(path)
        except OSError:
            s.close()
            raise StateError(f"the {what} of VM {g.vm} is not there (is the VM running?)",
                             hint=f"ravel status {g.app}") from None
        return Link(s)
    rt = ctx.hosts.runtime(g.provider, g.host)
    # the host runtime's socket relay (the one `ravel console` uses)
    return Link(t.stream([rt.python, rt.pyz, "console", path], timeout=CONNECT_S))
