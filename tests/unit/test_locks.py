"""Locks and markers name their owner (pid, start time, host, boot), so a dead owner is told at
once from a live one, and the next command clears what it left (issue 15, defect 3)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from ravel import owners
from ravel.errors import StateError
from ravel.state import State

ROOT = Path(__file__).resolve().parents[2]


def test_owner_of_this_process():
    me = owners.me()
    assert me.pid == os.getpid() and me.host == socket.gethostname() and len(me.boot) == 36
    assert me.start == owners.start_ticks(os.getpid()) > 0
    assert abs(me.started_at() - time.time()) < 24 * 3600 * 365
    assert owners.gone(me.doc()) is None


def test_dead_reused_rebooted_and_remote_owners():
    me = owners.me().doc()
    p = subprocess.Popen(["true"])
    p.wait(10)
    assert owners.gone({**me, "pid": p.pid}) == f"pid {p.pid} has exited"
    assert owners.gone({**me, "start": me["start"] - 1}) == f"pid {me['pid']} is another process now"
    assert owners.gone({**me, "boot": "another-boot"}).endswith("has restarted since")
    far = {**me, "host": "elsewhere"}
    assert owners.gone(far) is None  # nothing to go by: alive
    assert owners.gone(far, beat_age=30, lease_s=300) is None
    assert owners.gone(far, beat_age=301, lease_s=300) == "no heartbeat from elsewhere for 301 s"
    # before owners were recorded: pid and time only, on no named machine: judged by the pid
    # once older than a lease
    assert owners.gone({"pid": os.getpid(), "time": time.time()}) is None
    assert owners.gone({"pid": os.getpid(), "time": time.time() - 365 * 24 * 3600}) == \
        f"pid {os.getpid()} is another process now"
    assert owners.gone({"pid": p.pid, "time": time.time() - 10}, beat_age=10, lease_s=300) is None
    assert owners.gone({"pid": p.pid, "time": time.time() - 400}, beat_age=400, lease_s=300) == \
        f"pid {p.pid} has exited"
    assert owners.gone({"time": 1}) == "it names no process"


HOLDER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from ravel.state import State
    with State(Path(sys.argv[1])).lock("lab", "publish"):
        print("held", flush=True)
        time.sleep(120)
""")


@pytest.fixture
def holder(tmp_path):
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(tmp_path / "state")], stdout=subprocess.PIPE,
                            text=True, cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)


def test_a_held_app_lock_names_its_holder(tmp_path, holder):
    state = State(tmp_path / "state")
    with pytest.raises(StateError, match=rf"app 'lab' is busy: publish running as pid {holder.pid} "
                                         rf"on {socket.gethostname()} since \d\d:\d\d:\d\d"):
        with state.lock("lab", "destroy"):
            pass


def test_a_lock_whose_holder_was_killed_is_cleared_and_said(tmp_path, holder):
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait(10)
    state = State(tmp_path / "state")
    said: list[str] = []
    state.notice = said.append
    with state.lock("lab", "destroy"):
        pass
    assert said == [f"app 'lab': cleared the lock of a publish (pid {holder.pid} on {socket.gethostname()}): "
                    f"pid {holder.pid} has exited"]
    with state.lock("lab", "destroy"):  # released cleanly: nothing to say the next time
        pass
    assert len(said) == 1
    assert (tmp_path / "state" / "locks" / "lab.lock").read_bytes() == b""
