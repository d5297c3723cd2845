"""Processes: running commands (bounded), pid identity, QMP, starting and stopping QEMU.

A pid is only ever signalled after checking that /proc/<pid>/cmdline is exactly the argv we
started (and that its start time did not change in between), so a reused pid is never hit.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

from . import supervise

COMMAND_TIMEOUT = 30.0
QEMU_START_TIMEOUT = 60.0
QMP_TIMEOUT = 2.0
QUIT_WAIT = 5.0
TERM_WAIT = 3.0
KILL_WAIT = 2.0


class CommandFailed(Exception):
    """A command exited non-zero, timed out or could not be run; the message says which."""

    def __init__(self, argv: Sequence[str], message: str, rc: Optional[int] = None,
                 stderr: str = "") -> None:
        self.argv = list(argv)
        self.rc = rc
        self.stderr = stderr
        super().__init__(message)


@dataclass(frozen=True)
class Result:
    rc: int
    stdout: str
    stderr: str


def run(argv: Sequence[str], *, check: bool = True, timeout: float = COMMAND_TIMEOUT,
        input: Optional[str] = None) -> Result:
    """Run argv (no shell), bounded by ``timeout``; raise CommandFailed on failure if ``check``."""
    shown = " ".join(argv)
    try:
        p = subprocess.run(list(argv), input=input, capture_output=True, text=True,
                           timeout=timeout, stdin=None if input is not None else subprocess.DEVNULL)
    except FileNotFoundError:
        raise CommandFailed(argv, f"{argv[0]}: command not found") from None
    except subprocess.TimeoutExpired:
        raise CommandFailed(argv, f"`{shown}` did not finish within {timeout:g} s") from None
    if check and p.returncode != 0:
        err = (p.stderr or p.stdout).strip()
        raise CommandFailed(argv, f"`{shown}` failed (exit {p.returncode}): {err}",
                            rc=p.returncode, stderr=p.stderr)
    return Result(p.returncode, p.stdout, p.stderr)


# -- pid identity ---------------------------------------------------------------------------

def read_pidfile(path: str) -> Optional[int]:
    try:
        with open(path) as f:
            text = f.read(64).strip()
    except OSError:
        return None
    return int(text) if text.isdigit() and int(text) > 1 else None


def cmdline(pid: int) -> Optional[Tuple[str, ...]]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            raw = f.read()
    except OSError:
        return None
    if not raw:
        return None  # kernel thread or zombie
    return tuple(raw.decode("utf-8", "surrogateescape").rstrip("\0").split("\0"))


def stat(pid: int) -> Optional[Tuple[str, int]]:
    """(state letter, start time in clock ticks) of a pid, or None if it does not exist."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            raw = f.read()
    except OSError:
        return None
    fields = raw[raw.rfind(")") + 2:].split()
    try:
        return fields[0], int(fields[19])
    except (IndexError, ValueError):
        return None


def alive(pid: int) -> bool:
    st = stat(pid)
    return st is not None and st[0] not in ("Z", "X")


def argv_matches(observed: Optional[Sequence[str]], argv: Sequence[str]) -> bool:
    """Is ``observed`` (a /proc cmdline) the process started from ``argv``?"""
    if not observed or len(observed) != len(argv):
        return False
    if tuple(observed[1:]) != tuple(argv[1:]):
        return False
    return observed[0] == argv[0] or os.path.basename(observed[0]) == os.path.basename(argv[0])


def is_ours(pid: Optional[int], argv: Sequence[str]) -> bool:
    return bool(pid) and alive(pid) and argv_matches(cmdline(pid), argv)


def wait_gone(pid: int, timeout: float, starttime: Optional[int] = None) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        st = stat(pid)
        if st is None or st[0] in ("Z", "X") or (starttime is not None and st[1] != starttime):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)


# -- QMP --------------------------------------------------------------------------------------

class QMPError(Exception):
    pass


def qmp_command(path: str, command: str, timeout: float = QMP_TIMEOUT,
                expect_eof: bool = False, arguments: Optional[dict] = None) -> dict:
    """Connect to a QMP unix socket, negotiate capabilities, run one command, return its reply."""
    deadline = time.monotonic() + timeout
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        try:
            sock.connect(path)
        except OSError as exc:
            raise QMPError(f"cannot connect to QMP socket {path}: {exc.strerror or exc}") from None
        reader = sock.makefile("rb")
        greeting = _qmp_read(reader, deadline)
        if "QMP" not in greeting:
            raise QMPError(f"unexpected QMP greeting: {greeting}")
        sock.sendall(b'{"execute": "qmp_capabilities"}\n')
        reply = _qmp_reply(reader, deadline)
        if "error" in reply:
            raise QMPError(f"qmp_capabilities failed: {reply['error']}")
        request: Dict[str, Any] = {"execute": command}
        if arguments:
            request["arguments"] = arguments
        sock.sendall(json.dumps(request).encode() + b"\n")
        try:
            reply = _qmp_reply(reader, deadline)
        except QMPError:
            if expect_eof:
                return {}
            raise
        if "error" in reply:
            raise QMPError(f"{command} failed: {reply['error']}")
        return reply
    except (socket.timeout, OSError) as exc:
        if expect_eof and isinstance(exc, (ConnectionResetError, BrokenPipeError)):
            return {}
        raise QMPError(f"QMP {command} on {path}: {exc}") from None
    finally:
        sock.close()


def _qmp_read(reader, deadline: float) -> dict:
    if time.monotonic() > deadline:
        raise QMPError("QMP timed out")
    line = reader.readline(1 << 20)
    if not line:
        raise QMPError("QMP connection closed")
    try:
        return json.loads(line)
    except ValueError:
        raise QMPError(f"QMP sent non-JSON: {line[:200]!r}") from None


def _qmp_reply(reader, deadline: float) -> dict:
    for _ in range(1000):  # skip asynchronous events, bounded
        msg = _qmp_read(reader, deadline)
        if "return" in msg or "error" in msg:
            return msg
    raise QMPError("QMP sent too many events without a reply")


# -- QEMU lifecycle ----------------------------------------------------------------------------

def start_qemu(argv: Sequence[str], pidfile: str, timeout: float = QEMU_START_TIMEOUT) -> int:
    """Exec a ``-daemonize`` QEMU under its supervisor (supervise.py: it records how the VM
    ends); returns after its init with the daemon's pid.

    Raises CommandFailed carrying QEMU's stderr when it exits non-zero or never writes a pid.
    """
    shown = os.path.basename(argv[0])
    unlink_quiet(supervise.exit_path(pidfile))  # an earlier run's end is not this one's
    try:
        p = subprocess.run(supervise.command(), input=supervise.request(argv, pidfile),
                           capture_output=True, text=True, timeout=timeout, start_new_session=True, cwd="/")
    except FileNotFoundError:
        raise CommandFailed(argv, f"{sys.executable}: not found") from None
    except subprocess.TimeoutExpired:
        pid = read_pidfile(pidfile)
        if pid and is_ours(pid, argv):
            stop_qemu(pid, argv, None)
        raise CommandFailed(argv, f"{shown} did not finish its start-up within {timeout:g} s")
    if p.returncode == 127 and not shutil.which(argv[0]):
        raise CommandFailed(argv, f"{argv[0]}: not found")
    if p.returncode != 0:
        err = (p.stderr or p.stdout).strip() or "(no output)"
        raise CommandFailed(argv, f"{shown} exited {p.returncode}: {err}", rc=p.returncode,
                            stderr=p.stderr)
    deadline = time.monotonic() + 2.0
    while True:
        pid = read_pidfile(pidfile)
        if pid and is_ours(pid, argv):
            return pid
        if time.monotonic() >= deadline:
            break
        time.sleep(0.05)
    err = p.stderr.strip()
    raise CommandFailed(argv, f"{shown} exited 0 but no live process is in {pidfile}"
                              + (f": {err}" if err else ""), stderr=p.stderr)


def stop_qemu(pid: int, argv: Sequence[str], qmp: Optional[str],
              quit_wait: float = QUIT_WAIT, shutdown_s: float = 0) -> str:
    """Stop a QEMU we started: with `shutdown_s`, the guest's own shutdown first (ACPI power
    button; QEMU exits when the guest powers off), bounded; then QMP quit, bounded wait, then
    SIGTERM, then SIGKILL.

    Returns a short description of how it stopped; raises CommandFailed if it would not die.
    """
    st = stat(pid)
    if st is None or st[0] in ("Z", "X"):
        return f"pid {pid} already gone"
    if not argv_matches(cmdline(pid), argv):
        return f"pid {pid} is no longer this VM (pid reused?); left alone"
    starttime = st[1]
    started = time.monotonic()
    why = ""
    if shutdown_s > 0 and qmp and os.path.exists(qmp):
        try:
            qmp_command(qmp, "system_powerdown")
            if wait_gone(pid, shutdown_s, starttime):
                return f"shut down by its guest in {time.monotonic() - started:.1f} s"
            why = f"the guest did not shut down within {shutdown_s:g} s; "
        except QMPError as exc:
            why = f"{exc}; "
    if qmp and os.path.exists(qmp):
        try:
            qmp_command(qmp, "quit", expect_eof=True)
            if wait_gone(pid, quit_wait, starttime):
                return f"quit via QMP in {time.monotonic() - started:.1f} s"
            why += f"still running {quit_wait:g} s after QMP quit"
        except QMPError as exc:
            why += str(exc)
    else:
        why += "no QMP socket"
    for sig, wait in ((signal.SIGTERM, TERM_WAIT), (signal.SIGKILL, KILL_WAIT)):
        st = stat(pid)
        if st is None or st[1] != starttime or not argv_matches(cmdline(pid), argv):
            return f"exited ({why})"
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return f"exited ({why})"
        if wait_gone(pid, wait, starttime):
            return f"stopped by {signal.Signals(sig).name} ({why})"
    raise CommandFailed(argv, f"pid {pid} survived SIGKILL ({why})")


def unlink_quiet(path: str) -> bool:
    try:
        os.unlink(path)
        return True
    except FileNotFoundError:
        return False


def list_dir(path: str) -> List[str]:
    try:
        return sorted(os.listdir(path))
    except OSError:
        return []


def write_json_atomic(path: str, doc: object, mode: int = 0o600) -> None:
    """Write JSON so a reader (or a runtime killed mid-write) sees the old or the new file,
    never half of one."""
    tmp = f"{path}.tmp{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(doc, f, indent=1, sort_keys=True)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        unlink_quiet(tmp)
        raise
