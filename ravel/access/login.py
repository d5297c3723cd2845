"""`ravel ssh APP VM [-- COMMAND...]`: the system's OpenSSH client (a real pty, window size,
Ctrl-C to the guest, -L/-R forwards, escape keys: all of it OpenSSH's) with ravel's options:
the login key, the guest's pinned host key and the connection through the VM's host (made here
and handed to ssh where the host is a namespace, handover.py; else `ravel proxy`).

ssh runs as a child: its stdin and stdout are this process's, untouched; its stderr passes
through a pipe, byte for byte, so that a refused host key can be told apart from a command's
own exit status 255 and said the way ravel says it for hosts."""

from __future__ import annotations

import argparse
import base64
import hashlib
import re
import signal
import subprocess
import sys
import threading
from typing import Sequence

from .. import keys
from ..errors import EnvironmentProblem, HostKeyMismatch, RavelError
from ..paths import paths
from ..run.sessions import Context
from .guest import Guest, guest, guests, require_ssh
from .handover import HandOver, proxy_of
from .openssh import ssh_argv, write_known_hosts

REFUSED = b"Host key verification failed."
TAIL = 16 << 10


def fingerprint(public_line: str) -> str:
    """OpenSSH's SHA256 fingerprint of "TYPE BASE64" (as `ssh-keygen -l` prints it)."""
    blob = base64.b64decode(public_line.split()[1])
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="ravel ssh", description="Log in to a VM, or run one COMMAND in it (stdout, stderr and exit status "
        "pass through), with OpenSSH through the VM's host; the guest's host key is the one ravel made. One "
        "COMMAND word is a shell command line; several are one command's exact arguments.")
    p.add_argument("app", metavar="APP")
    p.add_argument("vm", metavar="VM")
    p.add_argument("command", metavar="-- COMMAND", nargs=argparse.REMAINDER)
    p.add_argument("-L", dest="local", action="append", default=[], metavar="[BIND:]PORT:HOST:HOSTPORT",
                   help="forward a port here to HOST:HOSTPORT as the guest sees it (like ssh -L)")
    p.add_argument("-R", dest="remote", action="append", default=[], metavar="[BIND:]PORT:HOST:HOSTPORT",
                   help="forward a port of the guest to HOST:HOSTPORT here (like ssh -R)")
    p.add_argument("-t", dest="tty", action="store_true", help="give the command a terminal (like ssh -t)")
    return p


def main(argv: Sequence[str]) -> int:
    """`ravel ssh ...` (the CLI's launcher comes here directly: a light start-up)."""
    args = parser().parse_args(list(argv))
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    extra = [a for f in args.local for a in ("-L", f)] + [a for f in args.remote for a in ("-R", f)]
    ctx = Context(paths())
    try:
        return ssh(ctx, args.app, args.vm, command, extra + (["-t"] if args.tty else []))
    except RavelError as exc:
        sys.stderr.write(exc.plain("error: "))
        return exc.exit_code
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        return 130
    finally:
        ctx.close()


def ssh(ctx: Context, app: str, vm: str, command: Sequence[str], extra: Sequence[str] = ()) -> int:
    """Run ssh to the guest; its exit status (the remote command's, or 255 from ssh)."""
    g = guest(ctx, app, vm)
    require_ssh(g)
    key_file, _ = keys.user_key(keys.directory(ctx.paths.state))
    known = write_known_hosts(ctx.paths, app, guests(ctx, app))
    hand_over = HandOver.for_guest(ctx, g)  # the connection, made here
    try:
        argv = ssh_argv(g, known, key_file, command, extra, proxy_of(hand_over))
        ctx.close()  # nothing of ravel's stays open while the session lasts
        return run_client(argv, g)
    finally:
        if hand_over is not None:
            hand_over.close()


def run_client(argv: Sequence[str], g: Guest) -> int:
    try:
        proc = subprocess.Popen(argv, stderr=subprocess.PIPE)
    except FileNotFoundError:
        raise EnvironmentProblem("the OpenSSH client `ssh` is not installed", hint="apt-get install openssh-client") from None
    tail = bytearray()

    def copy() -> None:
        assert proc.stderr is not None
        out = sys.stderr.buffer
        while chunk := proc.stderr.read1(65536):
            out.write(chunk)
            out.flush()
            tail.extend(chunk)
            del tail[:-TAIL]

    t = threading.Thread(target=copy, daemon=True)
    t.start()
    # Ctrl-C belongs to the session: ssh (or, under a pty, the guest) decides what it does
    saved = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        rc = proc.wait()
    finally:
        signal.signal(signal.SIGINT, saved)
    t.join(5)
    if rc == 255:
        refused(bytes(tail), g)
    return rc


def refused(tail: bytes, g: Guest) -> None:
    """ssh's stderr `tail` says the guest showed another host key than the pinned one: say so
    the way ravel says it for hosts (nothing was sent: ssh stops before logging in)."""
    if REFUSED not in tail:
        return
    shown = re.search(rb"key sent by the remote host is\s*\n?\s*(SHA256:[A-Za-z0-9+/]+)", tail)
    presented = f"it presented {shown.group(1).decode()}" if shown else "it presented another key"
    assert g.host_key is not None
    raise HostKeyMismatch(
        f"VM {g.vm} of app {g.app!r}: HOST KEY MISMATCH: ravel made {g.host_key.split()[0]} "
        f"{fingerprint(g.host_key)} for this guest, {presented}; refused (nothing was sent)",
        hint="something else answers at the guest's address, or the guest's keys were changed "
             f"inside it; `ravel console {g.app} {g.vm}` reaches it without SSH")
