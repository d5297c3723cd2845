"""Starting a VM from a saved memory state (a `ravel snapshot --memory` restored by
`ravel publish --from`) instead of booting it: QEMU starts with ``-S -incoming defer`` on the
snapshot's disks, QMP ``migrate-incoming`` reads the state file, and ``cont`` lets the guest
run on from the instant it was paused.

A resume happens at most once per VM: the VM's record (run_dir/<vm>.argv) carries ``resume``:

- ``pending``  written before QEMU starts; the guest has not run. A QEMU found in this state
               (a run that died mid-resume) is restarted and the resume tried again.
- ``loaded``   the state is in; written before ``cont``. A QEMU found in this state only needs
               ``cont`` (the next apply does it).
- ``done``     the guest runs on. Any later start of this VM boots from its disks, which have
               moved on since the snapshot, even if the desired document still names a state.

The record's argv is what QEMU really runs (with ``-S -incoming defer``), so pid identity checks
keep working; its sha256 is the desired argv's, so a resumed VM is not restarted as changed.
"""

from __future__ import annotations

import os
import shlex
import time
from typing import Any, Dict, Optional, Sequence

from . import proc
from .snapshot import QMP, SnapshotError

INCOMING_ARGS = ("-S", "-incoming", "defer")
LOAD_TIMEOUT = 300.0  # reading the state of a large guest from a slow disk
RESUMED_NOTE = "RAVEL-RESUMED"  # written to the console log: the guest prints no ready line again


class ResumeFailed(Exception):
    pass


def resume_argv(argv: Sequence[str]) -> list:
    return list(argv) + list(INCOMING_ARGS)


def console_log(argv: Sequence[str]) -> Optional[str]:
    """The serial chardev's ``logfile=`` in a QEMU argv, if any."""
    for flag, value in zip(argv, argv[1:]):
        if flag == "-chardev":
            for part in value.split(","):
                if part.startswith("logfile="):
                    return part[len("logfile="):]
    return None


def note_resumed(argv: Sequence[str], name: str, incoming: str) -> None:
    log = console_log(argv)
    if not log:
        return
    line = f"\r\n[{RESUMED_NOTE} {name} from {os.path.basename(incoming)}]\r\n".encode()
    try:
        # QEMU appends to the same file (logappend=on): O_APPEND keeps both writes whole
        fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, line)
        finally:
            os.close(fd)
    except OSError:
        pass


def load(qmp_path: str, name: str, incoming: str, timeout: float = LOAD_TIMEOUT) -> float:
    """Feed the state file to a QEMU waiting with ``-incoming defer``; returns the seconds it
    took. Bounded by ``timeout``."""
    started = time.monotonic()
    q = QMP(qmp_path)
    try:
        q.cmd("migrate-incoming", uri=f"exec:cat {shlex.quote(incoming)}")
        deadline = started + timeout
        while True:
            st = q.cmd("query-migrate")
            status = st.get("status")
            if status == "completed":
                break
            if status in ("failed", "cancelled"):
                raise ResumeFailed(f"VM {name}: loading {incoming} failed: "
                                   f"{st.get('error-desc', status)}")
            if status is None:
                # QEMU 7.2 reports nothing until the stream's first section; it may already
                # be done when the stream was short: the run state tells
                run = q.cmd("query-status").get("status")
                if run not in ("inmigrate", "prelaunch"):
                    break
            if time.monotonic() >= deadline:
                raise ResumeFailed(f"VM {name}: loading {incoming} took longer than {timeout:g} s")
            time.sleep(0.02)
        run = q.cmd("query-status").get("status")
        if run not in ("paused", "prelaunch", "running"):
            raise ResumeFailed(f"VM {name}: after loading {incoming} QEMU is {run!r}")
    except SnapshotError as exc:
        raise ResumeFailed(f"VM {name}: {exc}") from None
    finally:
        q.close()
    return time.monotonic() - started


def cont(qmp_path: str, name: str) -> None:
    try:
        q = QMP(qmp_path)
    except SnapshotError as exc:
        raise ResumeFailed(f"VM {name}: {exc}") from None
    try:
        q.cmd("cont")
    except SnapshotError as exc:
        raise ResumeFailed(f"VM {name}: could not continue: {exc}") from None
    finally:
        q.close()


def start(p: Dict[str, Any]) -> str:
    """Start the VM of a ``vm.start`` action from ``p["incoming"]``; the record must not say the
    VM resumed before (``reconcile`` decides that). Raises ResumeFailed or proc.CommandFailed;
    a failed load stops QEMU again and leaves the record ``pending``, so the next apply retries
    on disks the guest never touched."""
    name, incoming, qmp = p["name"], p["incoming"], p["qmp"]
    if not os.path.isfile(incoming):
        raise ResumeFailed(f"VM {name}: memory state {incoming} does not exist on this host")
    argv = resume_argv(p["argv"])
    record = {"sha256": p["sha256"], "argv": argv, "pidfile": p["pidfile"], "qmp": qmp,
              "resume": "pending", "incoming": incoming}
    proc.write_json_atomic(p["record"], record)
    started = time.monotonic()
    try:
        pid = proc.start_qemu(argv, p["pidfile"])
    except proc.CommandFailed:
        if not proc.is_ours(proc.read_pidfile(p["pidfile"]), argv):
            for path in (p["pidfile"], qmp):  # left behind by a QEMU that failed during init
                proc.unlink_quiet(path)
        raise
    try:
        took = load(qmp, name, incoming)
    except ResumeFailed:
        proc.stop_qemu(pid, argv, qmp)
        raise
    proc.write_json_atomic(p["record"], {**record, "resume": "loaded"})
    finish(p["record"], record, name, qmp)
    return f"pid {pid}, resumed from {os.path.basename(incoming)} (state loaded in {took:.2f} s, " \
           f"{time.monotonic() - started:.2f} s in all)"


def finish(record_path: str, record: Dict[str, Any], name: str, qmp: str) -> str:
    """``cont`` a loaded VM and mark its resume done (also the ``vm.cont`` action)."""
    cont(qmp, name)
    proc.write_json_atomic(record_path, {**record, "resume": "done"})
    note_resumed(record["argv"], name, str(record.get("incoming", "")))
    return "continued"
