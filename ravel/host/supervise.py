"""How a VM ended: a small supervisor per QEMU records its exit status and signal.

QEMU runs with ``-daemonize``: its first process exits once the VM is set up, and the daemon
that runs the VM is re-parented. Nobody waits for it, so the kernel drops its exit status and
a crashed VM just "vanishes". The supervisor is the waiting parent it lacks: a tiny Python
process (``PROGRAM``, run with ``python3 -I -S -c``; about 8 MiB, asleep in ``waitpid``) that
marks itself a child subreaper (``prctl(PR_SET_CHILD_SUBREAPER)``), runs QEMU, relays QEMU's
start-up exit status and errors to the runtime exactly as before, and then waits for the
daemon, which the kernel now re-parents to it. When the daemon ends, the supervisor writes
``<vm>.exit`` beside the pidfile and exits:

    {"pid": 4242, "exit": 1 | null, "signal": "SIGKILL" | null, "core": false, "at": 1767225600.0}

QEMU's argv travels on stdin, not on the supervisor's command line, so the process that
carries a VM's ``-name ...,process=ravel-APP-VM`` is QEMU alone. A VM whose supervisor died too
(its namespace's processes were all killed, the OOM killer) leaves no record: then all that
can be known is that it vanished.
"""

from __future__ import annotations

import json
import sys
from typing import Any, Dict, List, Optional, Sequence

EXIT_SUFFIX = ".exit"
NAME = "ravel-supervise"  # the supervisor's argv[1]: what `ps` shows, after the program

PROGRAM = r'''
import ctypes, json, os, sys, time
req = json.loads(sys.stdin.readline())
argv, pidfile, record = req["argv"], req["pidfile"], req["exit"]
r, w = os.pipe()
if os.fork():
    # the runtime's child: exit with QEMU's own start-up status once the supervisor has it
    os.close(w)
    data = b""
    while True:
        chunk = os.read(r, 64)
        if not chunk:
            break
        data += chunk
    text = data.decode().strip()
    os._exit(int(text) if text.isdigit() else 1)
os.close(r)
ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER
null = os.open(os.devnull, os.O_RDWR)
qemu = os.fork()
if qemu == 0:
    os.dup2(null, 0)
    os.close(w)
    try:
        os.execvp(argv[0], argv)
    except OSError as exc:
        sys.stderr.write(f"{argv[0]}: {exc.strerror}\n")
    os._exit(127)
while True:
    try:
        _, status = os.waitpid(qemu, 0)
        break
    except InterruptedError:
        continue
code = os.waitstatus_to_exitcode(status)
code = code if code >= 0 else 128 - code
daemon = None
if code == 0:  # QEMU writes its pidfile before its first process exits; bounded anyway
    deadline = time.monotonic() + 5
    while daemon is None and time.monotonic() < deadline:
        try:
            with open(pidfile) as f:
                daemon = int(f.read(32).strip())
        except (OSError, ValueError):
            time.sleep(0.02)
os.write(w, str(code).encode())
os.close(w)
for fd in (0, 1, 2):
    os.dup2(null, fd)
while True:
    try:
        pid, status = os.waitpid(-1, 0)
    except InterruptedError:
        continue
    except ChildProcessError:
        break
    if pid != daemon:
        continue  # QEMU's intermediate child, re-parented here too
    doc = {"pid": pid, "exit": None, "signal": None, "core": False, "at": time.time()}
    if os.WIFSIGNALED(status):
        import signal
        try:
            doc["signal"] = signal.Signals(os.WTERMSIG(status)).name
        except ValueError:
            doc["signal"] = str(os.WTERMSIG(status))
        doc["core"] = os.WCOREDUMP(status)
    else:
        doc["exit"] = os.WEXITSTATUS(status)
    tmp = f"{record}.tmp{os.getpid()}"
    try:
        with open(tmp, "w") as f:
            json.dump(doc, f)
        os.replace(tmp, record)
    except OSError:
        try:
            os.unlink(tmp)
        except OSError:
            pass
    break
os._exit(0)
'''


def exit_path(pidfile: str) -> str:
    """Where the exit record of the VM with this pidfile goes (``run_dir/<vm>.exit``)."""
    base = pidfile[:-4] if pidfile.endswith(".pid") else pidfile
    return base + EXIT_SUFFIX


def command(python: Optional[str] = None) -> List[str]:
    return [python or sys.executable or "python3", "-I", "-S", "-c", PROGRAM, NAME]


def request(argv: Sequence[str], pidfile: str) -> str:
    """The supervisor's stdin: what to run and where its pidfile and exit record go."""
    return json.dumps({"argv": list(argv), "pidfile": pidfile, "exit": exit_path(pidfile)}) + "\n"


def supervisor_of(pid: int) -> Optional[int]:
    """The pid of the supervisor waiting for QEMU `pid`, if it has one."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        with open(f"/proc/{ppid}/cmdline", "rb") as f:
            args = f.read().split(b"\0")
    except (OSError, ValueError, IndexError):
        return None
    return ppid if NAME.encode() in args else None


def read_exit(path: str) -> Optional[Dict[str, Any]]:
    try:
        with open(path) as f:
            doc = json.load(f)
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) and isinstance(doc.get("pid"), int) else None


def describe(record: Optional[Dict[str, Any]]) -> str:
    """How a VM ended, in a few words: "killed by SIGKILL", "exited with status 1"."""
    if not record:
        return "vanished (no exit status was recorded: its supervisor ended too)"
    sig = record.get("signal")
    if sig:
        return f"killed by {sig}" + (" (core dumped)" if record.get("core") else "")
    code = record.get("exit")
    if code == 0:
        return "exited with status 0 (the guest powered off)"
    return f"exited with status {code}"


def crashed(record: Optional[Dict[str, Any]]) -> bool:
    """A VM that ended on its own other than by its guest powering off."""
    return not (record and not record.get("signal") and record.get("exit") == 0)


__all__ = ["PROGRAM", "command", "request", "exit_path", "read_exit", "describe", "crashed"]
