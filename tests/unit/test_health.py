"""Honest status (defect 6 of issue 15): the label `ravel list` gives an app, the lock holder read
from /proc/locks without touching the lock, and a live pid is one started with its pidfile."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from ravel.run.health import ago, label, live_pid, lock_holder
from ravel.state import State


@pytest.mark.parametrize("recorded,busy,wanted,down,unknown,seen,want", [
    ("running", None, 4, [], [], None, "running"),
    ("running", None, 4, ["db"], [], None, "degraded (1 of 4 VMs down)"),
    ("running", None, 4, ["a", "b", "c", "d"], [], None, "broken (all 4 VMs down)"),
    ("running", None, 1, ["a"], [], None, "broken (1 VM down)"),
    ("stopped", None, 0, [], [], None, "stopped"),
    ("running", None, 2, [], [], 240.0, "running (seen 4 min ago)"),
    ("running", None, 3, ["a"], ["b"], 7200.0, "degraded (1 of 3 VMs down, 1 not observed yet, seen 2 h ago)"),
    ("destroying", None, 4, [], [], None, "destroying (interrupted: destroy it again)"),
    ("destroying", 4242, 4, ["a"], [], None, "destroying"),
    ("publishing", None, 4, [], [], None, "broken (publish interrupted: publish it again)"),
    ("publishing", 4242, 4, ["a"], [], None, "publishing"),
])
def test_label(recorded, busy, wanted, down, unknown, seen, want):
    assert label(recorded, busy, wanted, down, unknown, seen) == want


def test_ago():
    assert [ago(s) for s in (5, 300, 3 * 3600, 4 * 86400)] == ["5 s ago", "5 min ago", "3 h ago", "4 days ago"]


def test_lock_holder_is_read_without_taking_the_lock(tmp_path):
    state = State(tmp_path)
    assert lock_holder(tmp_path, "demo") is None
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import time
        from pathlib import Path
        from ravel.state import State
        with State(Path({str(tmp_path)!r})).lock("demo", "publish"):
            print("locked", flush=True)
            time.sleep(60)
    """)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        assert lock_holder(tmp_path, "demo") == holder.pid
        assert lock_holder(tmp_path, "other") is None
    finally:
        holder.kill()
        holder.wait(10)
    assert lock_holder(tmp_path, "demo") is None
    with state.lock("demo", "publish"):  # asking never left anything behind
        pass


def test_live_pid_is_the_process_started_with_that_pidfile(tmp_path):
    pidfile = tmp_path / "vm.pid"
    other = tmp_path / "other.pid"
    p = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)", "-pidfile", str(pidfile)])
    try:
        pidfile.write_text(f"{p.pid}\n")
        other.write_text(f"{p.pid}\n")
        assert live_pid(str(pidfile)) == p.pid
        assert live_pid(str(other)) is None  # a pid that is not this VM's (reused)
    finally:
        p.kill()
        p.wait(10)
    assert live_pid(str(pidfile)) is None
    assert live_pid(str(tmp_path / "missing.pid")) is None
