"""SQLite state: allocations stay unique and stable; the app lock refuses a second holder."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from ravel.errors import StateError
from ravel.state import State


def test_vnis_unique_across_apps_and_stable(tmp_path):
    s = State(tmp_path)
    a = s.vnis("a", ["lan", "wan"])
    b = s.vnis("b", ["lan", "wan"])
    assert len(set(a.values()) | set(b.values())) == 4
    assert s.vnis("a", ["lan", "wan"]) == a
    # a removed network frees its VNI; the others keep theirs
    assert s.vnis("a", ["lan"]) == {"lan": a["lan"]}
    s.close()
    assert State(tmp_path).vnis("b", ["lan", "wan"]) == b


def test_host_ids_unique(tmp_path):
    s = State(tmp_path)
    a = s.host_ids("a", ["host-1", "host-2"])
    b = s.host_ids("b", ["host-1"])
    assert set(a.values()).isdisjoint(b.values())
    s.delete_app("a")
    c = s.host_ids("c", ["host-1"])
    assert c["host-1"] in a.values()  # reused after the app is gone


def test_apps_round_trip(tmp_path):
    s = State(tmp_path)
    s.put_app("demo", "local", "publishing", "/x/demo.yaml", "name: demo", {"hosts": []})
    s.set_app_status("demo", "running")
    rec = s.require_app("demo")
    assert (rec.provider, rec.status, rec.plan) == ("local", "running", {"hosts": []})
    with pytest.raises(StateError, match="no app named 'nope' \\(apps: demo\\)"):
        s.require_app("nope")


def test_lock_refuses_a_second_process(tmp_path):
    s = State(tmp_path)
    child = textwrap.dedent(f"""
        import sys
        from pathlib import Path
        from ravel.state import State
        from ravel.errors import StateError
        try:
            with State(Path({str(tmp_path)!r})).lock("demo", "publish"):
                print("got it")
        except StateError as e:
            print("refused:", e.message)
    """)
    with s.lock("demo", "publish"):
        out = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, timeout=30).stdout
        assert out.startswith("refused: app 'demo' is busy: publish running as pid")
    out = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, timeout=30).stdout
    assert out.strip() == "got it"


def test_lock_released_when_holder_is_killed(tmp_path):
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
        with pytest.raises(StateError):
            with State(tmp_path).lock("demo", "publish"):
                pass
    finally:
        holder.kill()
        holder.wait(10)
    with State(tmp_path).lock("demo", "publish"):
        pass
