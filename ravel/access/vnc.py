"""`ravel vnc APP VM`: the VM's VNC console (a unix socket on its host) on a port of 127.0.0.1
here, through the host's transport, for graphical installers; until Ctrl-C."""

from __future__ import annotations

import socket
import threading
from typing import Callable

from ..errors import StateError
from ..run.sessions import Context
from .channel import Link, unix
from .guest import guest, require_running
from .relay import pump

ACCEPT_POLL_S = 0.5


def forward(ctx: Context, app: str, vm: str, port: int | None, on_listening: Callable[[str], None],
            stop: threading.Event | None = None) -> None:
    """Listen on 127.0.0.1:`port` (any free port when None) and join every connection to the
    VM's VNC socket, until Ctrl-C (or `stop` is set). Only this machine can connect."""
    g = guest(ctx, app, vm)
    require_running(g)
    if not g.vnc:
        raise StateError(f"VM {vm} of app {app!r} has no VNC console recorded", hint=f"publish {app} again")
    unix(ctx, g, g.vnc, "VNC console").close()  # there before anything listens
    stop = stop or threading.Event()
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        srv.bind(("127.0.0.1", port or 0))
    except OSError as exc:
        srv.close()
        raise StateError(f"cannot listen on 127.0.0.1:{port}: {exc.strerror}", hint="choose another --port") from None
    srv.listen(8)
    srv.settimeout(ACCEPT_POLL_S)
    open_links: list[tuple[Link, Link]] = []
    on_listening(f"vnc://127.0.0.1:{srv.getsockname()[1]}")
    try:
        while not stop.is_set():
            try:
                client, _ = srv.accept()
            except socket.timeout:
                continue
            client.settimeout(None)
            a, b = Link(client), unix(ctx, g, g.vnc, "VNC console")
            open_links.append((a, b))
            threading.Thread(target=_serve, args=(a, b), daemon=True).start()
    finally:
        srv.close()
        for a, b in open_links:
            a.close()
            b.close()


def _serve(a: Link, b: Link) -> None:
    try:
        pump(a, b)
    finally:
        a.close()
        b.close()
