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


def test_remote_apps_are_judged_by_their_last_observation_with_its_age(tmp_path):
    from ravel.run.health import OBSERVED, app_health, observation, remember

    state = State(tmp_path)
    state.put_app("cloudy", "aws", "running")
    state.host_ids("cloudy", ["host-1", "host-2"])
    for vm, host in (("a", "host-1"), ("b", "host-1"), ("c", "host-2")):
        state.put_vm("cloudy", vm, host, "running", {"console": f"/r/{vm}.serial"})
    state.update_host("cloudy", "host-1", extra={"desired": {"keep": True}})
    rec = state.require_app("cloudy")
    assert app_health(state, rec).status == "running (3 not observed yet)"
    # what status saw: written in place, never over what a publish wrote into the same extra
    remember(state, "cloudy", {"host-1": {"a": {"running": True}, "b": {"running": False}}, "host-2": None})
    host1 = next(h for h in state.hosts("cloudy") if h.name == "host-1")
    assert host1.extra["desired"] == {"keep": True} and host1.extra[OBSERVED]["vms"] == {"a": True, "b": False}
    state.note_host("cloudy", "host-2", OBSERVED, observation({"c": {"running": True}}, now=host1.extra[OBSERVED]["at"] - 600))
    h = app_health(state, rec, now=host1.extra[OBSERVED]["at"] + 30)
    assert h.down == ("b",) and h.status == "degraded (1 of 3 VMs down, seen 10 min ago)"
