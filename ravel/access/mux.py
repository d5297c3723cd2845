"""One OpenSSH connection to a guest for a run of commands: a ControlMaster in a private
directory, and each command a client multiplexed over it (no handshake of its own).

`ravel cp` moves its bytes this way. A guest under TCG spends its CPU on the SSH cipher, and
OpenSSH's chacha20-poly1305 costs it far less than the AES-CTR + HMAC-SHA2 (or AES-GCM) that
paramiko offers: 100 MiB into a Debian guest took 7.5-8 s over paramiko against 5-5.5 s over
OpenSSH, measured on this machine. The options are `ravel ssh`'s (openssh.py): the login key,
the guest's pinned host key with strict checking, `ravel proxy` through the VM's host.
"""

from __future__ import annotations

import ctypes
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import IO, Any, Sequence

from .. import keys
from ..errors import EnvironmentProblem, TransportError
from ..run.sessions import Context
from .guest import Guest, guests
from .login import refused
from .openssh import options, remote_command, write_known_hosts

CONNECT_S = 60.0
PR_SET_PDEATHSIG = 1
TAIL = 16 << 10


class GuestShell:
    """Commands in a guest over one OpenSSH connection (closed with `close`)."""

    def __init__(self, ctx: Context, g: Guest) -> None:
        self.g = g
        key_file, _ = keys.user_key(keys.directory(ctx.paths.state))
        known = write_known_hosts(ctx.paths, g.app, guests(ctx, g.app))
        self.dir = Path(tempfile.mkdtemp(prefix="ravel-ssh-"))  # 0700: the control socket is a login
        self.control = self.dir / "control"
        self.base = ["ssh", "-F", "/dev/null"]
        for k, v in [*options(g, known, key_file), ("BatchMode", "yes"), ("LogLevel", "ERROR"),
                     ("ControlPath", str(self.control))]:
            self.base += ["-o", f"{k}={v}"]
        self.master: subprocess.Popen[bytes] | None = None
        try:
            self._connect()
        except BaseException:
            self.close()
            raise

    def _connect(self) -> None:
        try:
            with open(self.dir / "master.err", "wb") as err:  # the master has its own copy of the fd
                self.master = subprocess.Popen([*self.base, "-o", "ControlMaster=yes", "-N", "-T", "--", self.g.alias],
                                               stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err,
                                               preexec_fn=_end_with_us)
        except FileNotFoundError:
            raise EnvironmentProblem("the OpenSSH client `ssh` is not installed",
                                     hint="apt-get install openssh-client") from None
        deadline = time.monotonic() + CONNECT_S
        while not self.control.exists():  # ssh makes it once the guest has let it in
            rc = self.master.poll()
            if rc is not None or time.monotonic() > deadline:
                tail = (self.dir / "master.err").read_bytes()[-TAIL:]
                refused(tail, self.g)  # a host key other than the pinned one: HOST KEY MISMATCH
                said = tail.decode(errors="replace").strip().splitlines()
                raise TransportError(f"VM {self.g.vm} of app {self.g.app!r}: no SSH connection: "
                                     f"{said[-1] if said else f'ssh ended with status {rc}' if rc is not None else 'timed out'}",
                                     hint=f"is it up? `ravel status {self.g.app}`; `ravel console {self.g.app} {self.g.vm}`")
            time.sleep(0.02)

    def argv(self, command: Sequence[str]) -> list[str]:
        return [*self.base, "-o", "ControlMaster=no", "-T", "--", self.g.alias, *remote_command(command)]

    def scp_argv(self, local: str, remote: str) -> list[str]:
        """scp of a file here to `remote` in the guest, over the connection."""
        return ["scp", "-q", *self.base[1:], "-o", "ControlMaster=no", "--", local, f"{self.g.alias}:{remote}"]

    def popen(self, command: Sequence[str], stdin: int | IO[Any] | None = subprocess.DEVNULL,
              stdout: int | IO[Any] | None = subprocess.PIPE) -> subprocess.Popen[bytes]:
        return subprocess.Popen(self.argv(command), stdin=stdin, stdout=stdout, stderr=subprocess.PIPE)

    def run(self, command: Sequence[str], timeout: float = 300.0) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(self.argv(command), stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout)

    def close(self) -> None:
        if self.master is not None and self.master.poll() is None:
            subprocess.run([*self.base, "-O", "exit", "--", self.g.alias], capture_output=True, timeout=10,
                           stdin=subprocess.DEVNULL)
            try:
                self.master.wait(5)
            except subprocess.TimeoutExpired:
                self.master.kill()
                self.master.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


def _end_with_us() -> None:
    """In the master, before it runs: it ends when this process does, however that happens
    (a `ravel cp` killed with SIGKILL must not leave a login to the guest open)."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):
        pass


def sh(script: str, *args: str) -> list[str]:
    """A shell script and its arguments, as one command for the guest."""
    return ["sh", "-c", script, "sh", *args]

