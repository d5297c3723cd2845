"""How a VM ended: a real `-daemonize` QEMU (no machine: it starts in a few hundred ms and uses no
CPU) under its supervisor. Its exit status or signal is recorded once it ends, whoever ends it;
its start-up errors still reach the runtime; the supervisor carries no VM name on its command
line (the process named ravel-APP-VM is QEMU alone)."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest

from ravel.host import proc, supervise
from ravel.host.desired import Desired
from ravel.host.facts import gather_vms, Owned, OwnedVM


def qemu(tmp_path: Path, name: str = "vm") -> tuple[list[str], str, str]:
    pidfile, qmp = str(tmp_path / f"{name}.pid"), str(tmp_path / f"{name}.qmp")
    argv = ["qemu-system-x86_64", "-name", f"{name},process=ravel-svtest-{name}", "-machine", "none",
            "-display", "none", "-nodefaults", "-no-user-config", "-qmp", f"unix:{qmp},server=on,wait=off",
            "-daemonize", "-pidfile", pidfile]
    return argv, pidfile, qmp


def wait_record(pidfile: str, timeout: float = 5.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rec = supervise.read_exit(supervise.exit_path(pidfile))
        if rec:
            return rec
        time.sleep(0.02)
    raise AssertionError("no exit record")


@pytest.fixture
def started(tmp_path):
    pids = []
    yield pids
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def test_a_killed_qemu_leaves_its_signal(tmp_path, started):
    argv, pidfile, _ = qemu(tmp_path)
    pid = proc.start_qemu(argv, pidfile)
    started.append(pid)
    waiter = supervise.supervisor_of(pid)
    assert waiter is not None
    assert b"process=ravel" not in Path(f"/proc/{waiter}/cmdline").read_bytes()
    assert not os.path.exists(supervise.exit_path(pidfile))
    os.kill(pid, signal.SIGKILL)
    rec = wait_record(pidfile)
    assert rec["pid"] == pid and rec["signal"] == "SIGKILL" and rec["exit"] is None
    assert supervise.describe(rec) == "killed by SIGKILL" and supervise.crashed(rec)
    assert proc.wait_gone(waiter, 5)  # its work done, the supervisor ends
    # the host runtime's view: not running, and why
    d = Desired(app="svtest", run_dir=str(tmp_path))
    fact = gather_vms(d, Owned(vms={"vm": OwnedVM(pidfile, "")}))["vm"]
    assert not fact.running and fact.ended == rec
    # a new start forgets the old end
    pid2 = proc.start_qemu(argv, pidfile)
    started.append(pid2)
    assert not os.path.exists(supervise.exit_path(pidfile))


def test_a_qemu_that_quits_exits_zero_and_a_restart_is_not_a_crash(tmp_path, started):
    argv, pidfile, qmp = qemu(tmp_path)
    pid = proc.start_qemu(argv, pidfile)
    started.append(pid)
    assert "quit via QMP" in proc.stop_qemu(pid, argv, qmp)
    rec = wait_record(pidfile)
    assert rec["exit"] == 0 and rec["signal"] is None and not supervise.crashed(rec)
    assert "powered off" in supervise.describe(rec)


def test_start_up_errors_still_reach_the_runtime(tmp_path):
    argv, pidfile, _ = qemu(tmp_path)
    with pytest.raises(proc.CommandFailed, match="-bogus: invalid option"):
        proc.start_qemu(argv[:1] + ["-bogus"] + argv[1:], pidfile)
    with pytest.raises(proc.CommandFailed, match="no-such-qemu: not found"):
        proc.start_qemu(["no-such-qemu"] + argv[1:], pidfile)
    assert not os.path.exists(supervise.exit_path(pidfile))


def test_without_a_record_all_that_is_known_is_that_it_vanished():
    assert supervise.describe(None).startswith("vanished")
    assert supervise.crashed(None)
    assert supervise.read_exit("/nonexistent/vm.exit") is None
    assert json.loads(supervise.request(["q"], "/r/vm.pid")) == {"argv": ["q"], "pidfile": "/r/vm.pid",
                                                                 "exit": "/r/vm.exit"}
