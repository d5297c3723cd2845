"""OpenSSH to a guest for ravel's own commands: `Session`, one command over a connection of
its own (one handshake, one session: the least work for the guest when one command does it
all, as a file copy does), and `GuestShell`, a run of commands over one connection (a
ControlMaster in a private directory, each command a client multiplexed over it).

`ravel cp` moves its bytes this way. A guest under TCG spends its CPU on the SSH cipher, and
OpenSSH's chacha20-poly1305 costs it far less than the AES-CTR + HMAC-SHA2 (or AES-GCM) that
paramiko offers: 100 MiB into a Debian guest took 7.5-8 s over paramiko against 5-5.5 s over
OpenSSH, measured on this machine. The options are `ravel ssh`'s (openssh.py): the login key,
the guest's pinned host key with strict checking, the connection through the VM's host (handed
over by ravel for a namespace host, handover.py; else `ravel proxy`).
"""

from __future__ import annotations

import ctypes
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import IO, Any, Sequence

from .. import keys
from ..errors import EnvironmentProblem, TransportError
from ..run.sessions import Context
from .guest import Guest, guests
from .handover import HandOver, proxy_of
from .login import refused
from .openssh import options, remote_command, write_known_hosts

CONNECT_S = 60.0
PR_SET_PDEATHSIG = 1
TAIL = 16 << 10


def login_argv(ctx: Context, g: Guest, proxy: str | None = None) -> list[str]:
    """`ssh` with ravel's options for the guest, never asking anything (BatchMode); `proxy`,
    a ProxyCommand that hands ssh a connection (handover.py), instead of `ravel proxy`."""
    key_file, _ = keys.user_key(keys.directory(ctx.paths.state))
    known = write_known_hosts(ctx.paths, g.app, guests(ctx, g.app))
    argv = ["ssh", "-F", "/dev/null"]
    for k, v in [*options(g, known, key_file, proxy=proxy), ("BatchMode", "yes"), ("LogLevel", "ERROR")]:
        argv += ["-o", f"{k}={v}"]
    return argv


def no_connection(g: Guest, tail: bytes, rc: int | None) -> TransportError:
    """What ssh's stderr `tail` says went wrong; a host key other than the pinned one raises
    HOST KEY MISMATCH here."""
    refused(tail, g)
    said = tail.decode(errors="replace").strip().splitlines()
    return TransportError(f"VM {g.vm} of app {g.app!r}: no SSH connection: "
                          f"{said[-1] if said else f'ssh ended with status {rc}' if rc is not None else 'timed out'}",
                          hint=f"is it up? `ravel status {g.app}`; `ravel console {g.app} {g.vm}`")


def _popen(argv: list[str], **kw: Any) -> subprocess.Popen[bytes]:
    try:
        return subprocess.Popen(argv, **kw)
    except FileNotFoundError:
        raise EnvironmentProblem("the OpenSSH client `ssh` is not installed",
                                 hint="apt-get install openssh-client") from None


class Session:
    """One command in the guest over a connection of its own: its stdin and stdout are pipes
    (or what is given), its stderr is kept (the last TAIL bytes) for `said` and for telling a
    refused connection apart. The guest ends the command when the connection goes, so nothing
    outlives ravel."""

    def __init__(self, ctx: Context, g: Guest, command: Sequence[str], stdin: int | IO[Any] | None = subprocess.PIPE,
                 stdout: int | IO[Any] | None = subprocess.PIPE) -> None:
        self.g = g
        self.hand_over = HandOver.for_guest(ctx, g)
        try:
            self.proc = _popen([*login_argv(ctx, g, proxy_of(self.hand_over)), "-T", "--", g.alias, *remote_command(command)],
                               stdin=stdin, stdout=stdout, stderr=subprocess.PIPE)
        except BaseException:
            self._let_go()
            raise
        self.tail = bytearray()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        while chunk := self.proc.stderr.read1(65536):
            self.tail.extend(chunk)
            del self.tail[:-TAIL]

    def ended(self) -> int:
        """Its exit status once it has ended (after `proc.wait`); 255, ssh's own failure,
        raises: HOST KEY MISMATCH or no connection."""
        rc = self.proc.wait()
        self._reader.join(5)
        self._let_go()
        if rc == 255:
            raise no_connection(self.g, bytes(self.tail), rc)
        return rc

    def said(self) -> str:
        """The last line the command wrote to stderr."""
        lines = bytes(self.tail).decode(errors="replace").strip().splitlines()
        return lines[-1] if lines else f"exit status {self.proc.returncode}"

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._reader.join(5)
        self._let_go()

    def _let_go(self) -> None:
        if self.hand_over is not None:
            self.hand_over.close()


class GuestShell:
    """Commands in a guest over one OpenSSH connection (closed with `close`)."""

    def __init__(self, ctx: Context, g: Guest) -> None:
        self.g = g
        self.dir = Path(tempfile.mkdtemp(prefix="ravel-ssh-"))  # 0700: the control socket is a login
        self.control = self.dir / "control"
        self.master: subprocess.Popen[bytes] | None = None
        self.hand_over: HandOver | None = None
        try:
            # the master's connection, like a Session's (the other commands go through the master)
            self.hand_over = HandOver.for_guest(ctx, g)
            self.base = [*login_argv(ctx, g, proxy_of(self.hand_over)), "-o", f"ControlPath={self.control}"]
            self._connect()
        except BaseException:
            self.close()
            raise

    def _connect(self) -> None:
        with open(self.dir / "master.err", "wb") as err:  # the master has its own copy of the fd
            self.master = _popen([*self.base, "-o", "ControlMaster=yes", "-N", "-T", "--", self.g.alias],
                                 stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err,
                                 preexec_fn=_end_with_us)
        deadline = time.monotonic() + CONNECT_S
        while not self.control.exists():  # ssh makes it once the guest has let it in
            rc = self.master.poll()
            if rc is not None or time.monotonic() > deadline:
                raise no_connection(self.g, (self.dir / "master.err").read_bytes()[-TAIL:], rc)
            time.sleep(0.02)

    def argv(self, command: Sequence[str]) -> list[str]:
        return [*self.base, "-o", "ControlMaster=no", "-T", "--", self.g.alias, *remote_command(command)]

    def popen(self, command: Sequence[str], stdin: int | IO[Any] | None = subprocess.DEVNULL,
              stdout: int | IO[Any] | None = subprocess.PIPE) -> subprocess.Popen[bytes]:
        return subprocess.Popen(self.argv(command), stdin=stdin, stdout=stdout, stderr=subprocess.PIPE)

    def run(self, command: Sequence[str], timeout: float = 300.0) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(self.argv(command), stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout)

    def close(self) -> None:
        if self.hand_over is not None:
            self.hand_over.close()
        if self.master is not None and self.master.poll() is None:
            subprocess.run([*self.base, "-O", "exit", "--", self.g.alias], capture_output=True, timeout=10,
                           stdin=subprocess.DEVNULL)
            try:
                self.master.wait(5)
            except subprocess.TimeoutExpired:
                self.master.kill()
                self.master.wait()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> GuestShell:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


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

