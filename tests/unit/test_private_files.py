"""What ravel keeps under its state and data directories is for its user alone: directories
0700, files 0600, like the keys (issue 15, defect 9). Partial files of a killed put go too."""

from __future__ import annotations

import hashlib
import os
import stat
import subprocess
from pathlib import Path

from ravel import owners
from ravel.paths import private_dir, write_private
from ravel.snapshot.memory import Resume, record
from ravel.paths import paths
from ravel.state import State
from ravel.store.local import LocalStore


def modes(root: Path) -> dict[str, int]:
    out = {".": stat.S_IMODE(root.stat().st_mode)}
    for d, dirs, files in os.walk(root):
        for n in dirs + files:
            p = Path(d) / n
            out[str(p.relative_to(root))] = stat.S_IMODE(p.lstat().st_mode)
    return out


def test_state_database_is_private_and_an_older_one_is_made_so(tmp_path):
    os.umask(0o022)  # as a user's shell has it
    State(tmp_path / "state").put_app("a", "local", "running")
    got = modes(tmp_path / "state")
    assert got["state.db"] == 0o600 and got["."] == 0o700 and got["locks"] == 0o700
    assert all(m == 0o600 for n, m in got.items() if n.startswith("state.db")), got
    os.chmod(tmp_path / "state" / "state.db", 0o644)
    os.chmod(tmp_path / "state", 0o755)
    State(tmp_path / "state").app("a")
    again = modes(tmp_path / "state")
    assert again["state.db"] == 0o600 and again["."] == 0o700


def test_local_store_is_private(tmp_path):
    os.umask(0o022)
    store = LocalStore(tmp_path / "deep" / "store")
    store.put_bytes("layers/abc", b"guest disk bytes")
    store.put_bytes("manifests/s.json", b"{}")
    got = modes(tmp_path / "deep")
    assert {n: m for n, m in got.items() if m not in (0o700, 0o600)} == {}, got
    assert got["store/layers/abc"] == 0o600 and got["store/layers"] == 0o700 and got["store"] == 0o700
    os.chmod(tmp_path / "deep" / "store", 0o755)  # an older ravel's
    store.put_bytes("layers/def", b"x")
    assert modes(tmp_path / "deep")["store"] == 0o700


def test_partial_puts_of_dead_writers_are_removed(tmp_path):
    store = LocalStore(tmp_path / "store")
    store.put_bytes("layers/a", b"1")
    p = subprocess.Popen(["true"])
    p.wait(10)
    me = owners.me()
    host, boot = (hashlib.sha256(x.encode()).hexdigest()[:8] for x in (me.host, me.boot))
    layers = tmp_path / "store" / "layers"
    dead = layers / f".put-{p.pid}-{me.start}-{host}-{boot}-abc"
    rebooted = layers / f".put-{me.pid}-{me.start}-{host}-00000000-abc"  # this machine, an earlier boot
    mine = layers / f".put-{me.pid}-{me.start}-{host}-{boot}-def"  # a put of this very process, in progress
    other = layers / f".put-{p.pid}-{me.start}-00000000-{boot}-abc"  # another machine's (a shared folder)
    old = layers / ".put-xyz"  # an older ravel's name: nothing tells, kept
    for f in (dead, rebooted, mine, other, old):
        f.write_bytes(b"partial")
    LocalStore(tmp_path / "store").put_bytes("layers/b", b"2")
    assert not dead.exists() and not rebooted.exists()
    assert mine.exists() and other.exists() and old.exists()
    assert list(store.list("layers/")) == ["layers/a", "layers/b"]


def test_data_files_are_private(tmp_path):
    os.umask(0o022)
    p = paths({"RAVEL_HOME": str(tmp_path / "home")})
    record(p, "app", {"vm": Resume("/x/vm.state")})
    write_private(p.data / "snapshots" / "s.yaml", "name: s\n")
    private_dir(p.data / "images")
    got = modes(tmp_path / "home")
    assert {n: m for n, m in got.items() if m not in (0o700, 0o600)} == {}, got
    assert got["data/apps/app/resume.json"] == 0o600 and got["data/snapshots/s.yaml"] == 0o600


def test_keys_are_private_public_halves_too(tmp_path):
    from ravel import keys

    os.umask(0o022)
    d = keys.directory(tmp_path / "state")
    keys.user_key(d)
    keys.host_key(d, "app", "host-1")
    keys.guest_key(d, "app", "vm")
    got = modes(tmp_path / "state")
    assert {n: m for n, m in got.items() if m not in (0o700, 0o600)} == {}, got
    assert any(n.endswith(".pub") for n in got)
