"""A connection to a guest's SSH port that ravel makes itself, for the ssh it starts, where the
VM's host is a namespace here: the socket made inside the namespace goes to ssh (OpenSSH's
ProxyUseFdpass) through a tiny ProxyCommand, with no second ravel (`ravel proxy`) to start."""

from __future__ import annotations

import shlex
import shutil
import socket
import sys
import tempfile
import threading
from pathlib import Path

from ..run.sessions import Context
from .channel import tcp
from .guest import Guest

ACCEPT_S = 60.0

# ssh's ProxyCommand when ravel has made the connection itself: it takes the socket from ravel
# over a unix socket in a private directory and hands it to ssh (ProxyUseFdpass). Python with
# -I -S starts in ~10 ms; `ravel proxy` (loading ravel and its state) takes ~130 ms.
HAND_OVER = ("import socket,sys\n"
             "u=socket.socket(socket.AF_UNIX)\nu.connect(sys.argv[1])\n"
             "_,f,_,_=socket.recv_fds(u,1,1)\n"
             "f or sys.exit(1)\n"
             "socket.send_fds(socket.socket(fileno=1),[b'x'],f)\n")


def proxy_of(hand_over: HandOver | None) -> str | None:
    """The ProxyCommand for ssh's options: the hand-over's, or None for `ravel proxy`."""
    return hand_over.proxy_command if hand_over is not None else None


class HandOver:
    """A connection to the guest's SSH port that ravel makes itself, where the VM's host is a
    namespace here (no `ravel proxy` to start: the connection is ready before ssh is), given to
    the one ssh that runs `proxy_command` (a unix socket in a 0700 directory: no one else's)."""

    def __init__(self, ctx: Context, g: Guest) -> None:
        self.conn = tcp(ctx, g, 22)
        self.listener = socket.socket(socket.AF_UNIX)
        try:
            self.dir = Path(tempfile.mkdtemp(prefix="ravel-ssh-"))
            self.listener.bind(str(self.dir / "conn"))
            self.listener.listen(1)
        except BaseException:
            self.close()
            raise
        self.listener.settimeout(ACCEPT_S)
        self._thread = threading.Thread(target=self._give, daemon=True)
        self._thread.start()

    @property
    def proxy_command(self) -> str:
        # ssh runs it as `exec LINE` in the user's shell and expands %-tokens (the script has none)
        return " ".join(shlex.quote(w) for w in (sys.executable, "-I", "-S", "-c", HAND_OVER, str(self.dir / "conn")))

    def _give(self) -> None:
        try:
            peer, _ = self.listener.accept()
            with peer:
                socket.send_fds(peer, [b"x"], [self.conn.fileno()])
        except OSError:
            pass  # closed, or ssh never asked (it ended first): the session says why
        finally:
            self.conn.close()  # ssh holds it now
            self.listener.close()
            shutil.rmtree(self.dir, ignore_errors=True)  # nothing left here, even if ravel is killed later

    @classmethod
    def for_guest(cls, ctx: Context, g: Guest) -> HandOver | None:
        """A hand-over where the VM's host is a namespace here; None: `ravel proxy` reaches it."""
        return cls(ctx, g) if g.via == "netns" else None

    def close(self) -> None:
        try:
            self.listener.shutdown(socket.SHUT_RDWR)  # an accept still waiting ends (close alone does not)
        except OSError:
            pass
        self.listener.close()
        if hasattr(self, "_thread"):
            self._thread.join(5)
        self.conn.close()
        if hasattr(self, "dir"):
            shutil.rmtree(self.dir, ignore_errors=True)
