"""`ravel proxy APP VM PORT [--fdpass]`: this process's stdin/stdout joined to a guest's TCP
port through its host, for OpenSSH's ProxyCommand (`ravel ssh-config`) and anything else that
speaks over stdio.

Started once per connection by ssh, scp, rsync or Ansible, so it starts light: `python -m ravel
proxy` comes here before the CLI (typer, rich) is imported. With `--fdpass` (OpenSSH's
ProxyUseFdpass, used for namespace hosts) the socket made inside the host's namespace is handed
to ssh and this process ends: ssh then talks to the guest with no relay in between.
"""

from __future__ import annotations

import os
import socket
import sys
from typing import Sequence

from ..errors import RavelError
from ..paths import paths
from ..run.sessions import Context
from .channel import Link, tcp
from .guest import guest, require_running
from .relay import Fds, pump

USAGE = "usage: ravel proxy APP VM PORT [--fdpass]"


def main(argv: Sequence[str]) -> int:
    args = [a for a in argv if a != "--fdpass"]
    if len(args) != 3 or not args[2].isdigit() or not 0 < int(args[2]) < 65536:
        sys.stderr.write(USAGE + "\n")
        return 2
    app, vm, port = args[0], args[1], int(args[2])
    ctx = Context(paths())
    try:
        g = guest(ctx, app, vm)
        require_running(g)
        conn = tcp(ctx, g, port)
        if "--fdpass" in argv and isinstance(conn, socket.socket):
            with socket.socket(fileno=os.dup(sys.stdout.fileno())) as out:
                socket.send_fds(out, [b"\0"], [conn.fileno()])
            conn.close()
            return 0
        if "--fdpass" in argv:
            raise RavelError(f"VM {vm}'s host is not reached through a namespace: --fdpass cannot be used",
                             hint=f"ravel ssh-config {app} writes the right options")
        try:
            pump(Fds(sys.stdin.fileno(), sys.stdout.fileno()), Link(conn))
        finally:
            conn.close()
        return 0
    except RavelError as exc:
        sys.stderr.write(exc.plain("ravel proxy: error: "))
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
    finally:
        ctx.close()
