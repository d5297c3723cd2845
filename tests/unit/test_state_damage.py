"""Defect 4 of issue 15: a damaged, emptied or replaced state database. Every command says so
in one line naming the file and the way out (exit 7, no traceback); each app's backup survives
and `ravel doctor --repair-state` rebuilds the state from it."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from ravel.errors import StateDamaged, StateError
from ravel.paths import paths
from ravel.run import state_backup
from ravel.run.lab import Lab
from ravel.state import State

ROOT = Path(__file__).resolve().parents[2]


def ravel(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, RAVEL_HOME=str(home), COLUMNS="200")
    return subprocess.run([sys.executable, "-m", "ravel", *args], capture_output=True, text=True, timeout=60,
                          env=env, cwd=ROOT, stdin=subprocess.DEVNULL)


def make_app(state: State, name: str, hosts: int = 2) -> None:
    state.put_app(name, "local", "running", f"/x/{name}.yaml", f"name: {name}\n", {"hosts": hosts})
    state.vnis(name, ["lan", "wan"])
    for h, host_id in state.host_ids(name, [f"host-{i}" for i in range(1, hosts + 1)]).items():
        state.update_host(name, h, ref=f"rv-{name}-{h}", status="up", extra={"namespace": f"rv-{name}-{h}"})
    state.put_vm(name, "web", "host-1", "running", {"console": "/nonexistent/web.serial", "log": "/nonexistent/web.log",
                                                    "ips": [], "macs": []})


def damage(db: Path) -> None:
    """Overwrite the pages after the first (the schema survives, the rows do not)."""
    with open(db, "r+b") as f:
        f.seek(4096)
        f.write(b"\xa5" * 8192)


@pytest.fixture
def home(tmp_path):
    h = tmp_path / "home"
    lab = Lab(paths({"RAVEL_HOME": str(h)}))
    make_app(lab.state, "alpha")
    make_app(lab.state, "beta", hosts=1)
    for app in ("alpha", "beta"):
        state_backup.save(lab.state, app)
    lab.close()
    return h


def test_garbage_file_is_damage_named_with_its_file(tmp_path):
    (tmp_path / "state.db").write_bytes(b"not a database at all" * 500)
    s = State(tmp_path)
    with pytest.raises(StateDamaged) as exc:
        s.apps()
    assert str(tmp_path / "state.db") in exc.value.message and "file is not a database" in exc.value.message
    assert "doctor --repair-state" in exc.value.hint and "destroy APP --force" in exc.value.hint
    assert s.integrity()  # PRAGMA integrity_check finds it too


def test_every_command_on_a_malformed_database_is_a_clear_state_error(home):
    db = home / "state" / "state.db"
    damage(db)
    for args in (["list"], ["status"], ["status", "alpha"], ["destroy", "alpha", "--yes"], ["stop", "alpha"],
                 ["publish", "blueprints/demo.yaml", "--name", "alpha"], ["snapshot", "alpha"]):
        p = ravel(home, *args)
        assert p.returncode == 7, (args, p.stdout, p.stderr)
        assert "internal error" not in p.stderr and "Traceback" not in p.stderr, p.stderr
        assert f"the state database {db} is damaged" in p.stderr, (args, p.stderr)
        assert "ravel doctor --repair-state" in p.stderr, p.stderr
    p = ravel(home, "doctor")
    assert p.returncode == 7 and "damaged" in p.stdout and "--repair-state" in p.stdout, p.stdout


def test_an_emptied_state_file_refuses_instead_of_forgetting_apps(home):
    db = home / "state" / "state.db"
    db.write_bytes(b"")
    for f in db.parent.glob("state.db-*"):
        f.unlink()
    p = ravel(home, "list")
    assert p.returncode == 7, p.stdout
    assert f"{db} is empty (0 bytes)" in p.stderr and "alpha, beta" in p.stderr, p.stderr
    p = ravel(home, "doctor")
    assert p.returncode == 7 and "lost apps (they have backups): alpha, beta" in p.stdout, p.stdout


def test_repair_rebuilds_a_malformed_database_from_the_backups(home):
    before = {}
    s = State(home / "state")
    for app in ("alpha", "beta"):
        before[app] = s.export_app(app)
    s.close()
    damage(home / "state" / "state.db")
    p = ravel(home, "doctor", "--repair-state")
    assert p.returncode == 0, p.stderr
    assert "was moved to" in p.stdout and "alpha: restored from its backup" in p.stdout, p.stdout
    assert "the state knows 2 apps: alpha, beta" in p.stdout
    aside = list((home / "state").glob("state.db.damaged-*"))
    assert len(aside) == 1  # kept, never deleted
    s = State(home / "state")
    assert s.integrity() == []
    for app in ("alpha", "beta"):
        assert s.export_app(app) == before[app]  # host ids, VNIs, VMs exactly as they were
    assert ravel(home, "doctor").returncode == 0
    assert "alpha" in ravel(home, "list").stdout


def test_backups_are_private_atomic_and_follow_the_app(home, tmp_path):
    s = State(home / "state")
    path = state_backup.path(s, "alpha")
    assert path.stat().st_mode & 0o777 == 0o600
    assert path.parent.stat().st_mode & 0o777 == 0o700
    doc = json.loads(path.read_text())
    assert doc == s.export_app("alpha")
    assert not [f for f in path.parent.iterdir() if ".tmp" in f.name]
    # a backup is never written from a state that fails its check: the last good one stays
    good = path.read_bytes()
    s.close()
    damage(home / "state" / "state.db")
    s = State(home / "state")
    with pytest.raises(StateDamaged):
        state_backup.save(s, "alpha")
    assert path.read_bytes() == good


def test_import_refuses_ids_another_app_holds(tmp_path):
    s = State(tmp_path)
    make_app(s, "alpha")
    doc = s.export_app("alpha")
    s.delete_app("alpha")
    make_app(s, "gamma")  # takes the same host ids and VNIs
    with pytest.raises(StateError, match="another app holds the same host id or VNI"):
        s.import_app(doc)
    assert s.export_app("alpha") is None  # nothing half-imported
    with pytest.raises(StateError, match="not an exported app"):
        s.import_app({"version": 99})


def test_a_busy_database_is_not_called_damaged(tmp_path):
    s = State(tmp_path)
    s.apps()
    err = s.failure(sqlite3.OperationalError("database is locked"))
    assert not isinstance(err, StateDamaged) and "stayed locked" in err.message
