"""The store and snapshots when things go wrong, with a real guest (issue 15).

One app (one busybox guest, 128 MiB) runs with its RAVEL_HOME on a small tmpfs of its own, so
the disk really fills up:

- defect 5, a full disk: `snapshot --memory` with no room for the memory state says "no space
  left on DIR: need N, have M" before any pause; when the disk fills while the state is being
  written, the partial state is removed and the same words say so; a local store without room
  for the new layers, and `publish --from` without room to restore, say so before writing; after
  each, nothing partial is left, and once there is room the next snapshot works;
- defect 2, a damaged layer: a layer damaged in the store is uploaded again by the next
  snapshot, which restores; with the app's own copy damaged too, the snapshot fails naming it;
- defect 3, a snapshot killed early: `store gc` works at once and says whose marker it cleared,
  and the next snapshot says whose app lock it found;
- defect 9: everything under the home's data and state directories is 0700/0600.

The tmpfs is unmounted, and every app destroyed, whatever happens.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest

from conftest import GUEST, Ravel, force_cleanup, leftovers, namespaces, qemu_pids, wait_until
from ravel.paths import paths
from ravel.snapshot.restore import restore

PID = os.getpid()
APP = f"full{PID}"
RESTORED = f"fullr{PID}"
APPS = (APP, RESTORED)
MIB = 1 << 20

BLUEPRINT = f"""\
name: fullsrc
networks:
  lan: {{subnet: 10.46.0.0/24}}
defaults:
  memory: 128MiB
  boot: {{kernel: {GUEST}/vmlinuz, initrd: {GUEST}/initrd.img, cmdline: console=ttyS0 quiet}}
vms:
  a:
    disks: [{{size: 16MiB}}]
    nics: [{{network: lan, ip: 10.46.0.11}}]
"""


def free(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    home = tmp_path_factory.mktemp("fullhome")
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=512m,mode=0700", "tmpfs", str(home)], check=True, timeout=30)
    r = Ravel(home)
    try:
        bp = home / "fullsrc.yaml"
        bp.write_text(BLUEPRINT)
        r("publish", str(bp), "--name", APP, "--wait", "--timeout", "240")
        yield r
    finally:
        (home / "filler").unlink(missing_ok=True)
        for app in APPS:
            r("destroy", app, "--yes", check=False)
        left = [x for app in APPS for x in leftovers(app, home)]
        for app in APPS:
            force_cleanup(app, home)
        if subprocess.run(["umount", str(home)], capture_output=True, timeout=60).returncode != 0:
            subprocess.run(["umount", "-l", str(home)], capture_output=True, timeout=60)
        assert not left, f"left behind: {left}"


class Filled:
    """The home's filesystem filled up to `leave` bytes free (a file of its own, removed at the end)."""

    def __init__(self, home: Path, leave: int) -> None:
        self.path = home / "filler"
        self.home = home
        self.path.unlink(missing_ok=True)
        self.more(free(home) - leave)

    def more(self, n: int) -> None:
        if n <= 0:
            return
        with open(self.path, "ab") as f:
            os.posix_fallocate(f.fileno(), f.seek(0, os.SEEK_END), n)

    def __enter__(self) -> "Filled":
        return self

    def __exit__(self, *exc) -> None:
        self.path.unlink(missing_ok=True)


def layers_dir(r: Ravel) -> Path:
    return r.home / "data" / "apps" / APP / r.status(APP)["a"]["host"] / "layers"


def states(r: Ravel) -> list[str]:
    return sorted(f.name for f in layers_dir(r).glob("*.state"))


def guest_answers(r: Ravel) -> None:
    with r.console(APP, "a") as con:
        assert con.check("echo alive-$((6*7))", timeout=60).strip().endswith("alive-42")
    assert r.status(APP)["a"]["state"] == "running"


def store_leftovers(r: Ravel) -> list[str]:
    store = r.home / "data" / "store"
    return sorted(str(p.relative_to(store)) for p in store.rglob("*")
                  if p.is_file() and (p.name.startswith(".put-") or p.parent.name == "locks"))


def snapshot_names(r: Ravel) -> list[str]:
    return [s["name"] for s in json.loads(r("snapshots", "--json").stdout)]


@pytest.fixture(scope="module")
def refused(lab):
    """A memory snapshot with no room for the state on the app's host: refused before any pause."""
    r = lab
    guest_answers(r)
    with Filled(r.home, 20 * MIB):
        before = free(r.home)
        p = r("snapshot", APP, "--memory", "--name", "m1", check=False)
        after = free(r.home)
    return p, before, after


def test_a_memory_snapshot_without_room_is_refused_before_any_pause(lab, refused):
    r = lab
    p, before, after = refused
    assert p.returncode != 0
    m = re.search(rf"no space left on {re.escape(str(layers_dir(r)))}: need (\d+\.\d) MiB, have (\d+\.\d) MiB "
                  r"\(the memory state of VM a\)", p.stderr)
    assert m, p.stderr
    assert 100 < float(m.group(1)) < 200 and abs(float(m.group(2)) - 20) < 1, p.stderr
    assert "Broken pipe" not in p.stderr and "paused" not in p.stderr
    assert states(r) == [] and abs(after - before) < MIB  # nothing written, nothing left
    assert "m1" not in snapshot_names(r) and store_leftovers(r) == []
    guest_answers(r)


def test_a_disk_that_fills_while_the_state_is_written_leaves_nothing(lab, refused):
    r = lab
    need = float(re.search(r"need (\d+\.\d) MiB", refused[0].stderr).group(1)) * MIB
    where = layers_dir(r)
    qemu = qemu_pids(APP)["a"]
    # room for the state when it is checked; then, once the host has prepared (its marker for
    # the new overlay is written after the check), QEMU is held still while the disk fills up,
    # so the state meets a full disk whatever the timing
    prepared = where / "a-disk0.qcow2.top.next"
    with Filled(r.home, int(need) + 4 * MIB) as filled:
        proc = r.popen("snapshot", APP, "--memory", "--name", "m2")
        stopped = False
        try:
            deadline = time.monotonic() + 120
            while not prepared.exists() and time.monotonic() < deadline and proc.poll() is None:
                time.sleep(0.0005)
            assert prepared.exists(), "the host never prepared"
            os.kill(qemu, signal.SIGSTOP)
            stopped = True
            filled.more(free(r.home) - 4 * MIB)
        finally:
            if stopped:
                os.kill(qemu, signal.SIGCONT)
            try:
                _, err = proc.communicate(timeout=300)
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait(30)
        left = states(r)
    assert proc.returncode != 0
    assert re.search(rf"no space left on {re.escape(str(where))}: need \d+\.\d MiB, have \d+\.\d MiB "
                     r"\(the memory state stopped at \d+\.\d MiB\)", err), err
    assert "Broken pipe" not in err
    assert left == [] and store_leftovers(r) == []
    assert "m2" not in snapshot_names(r)
    guest_answers(r)


def test_a_local_store_without_room_for_the_layers_is_refused(lab, refused):
    r = lab
    need = float(re.search(r"need (\d+\.\d) MiB", refused[0].stderr).group(1)) * MIB
    with Filled(r.home, int(need) + 30 * MIB):  # room for the state on the host, not for its upload too
        before = free(r.home)
        p = r("snapshot", APP, "--memory", "--name", "m3", check=False)
        after = free(r.home)
    assert p.returncode == 8, p.stderr
    assert re.search(rf"no space left on {re.escape(str(r.home / 'data' / 'store'))}: need \d+\.\d MiB, "
                     r"have \d+\.\d MiB", p.stderr), p.stderr
    assert states(r) == [] and store_leftovers(r) == []  # the state went from the host again
    assert abs(after - before) < 2 * MIB
    assert "m3" not in snapshot_names(r)


@pytest.fixture(scope="module")
def taken(lab, refused):
    """Once there is room: the snapshot works (after every failure above)."""
    r = lab
    out = json.loads(r("snapshot", APP, "--memory", "--name", "mok", "--json").stdout)
    return out


def test_with_room_again_the_next_memory_snapshot_works(lab, taken):
    r = lab
    assert taken["vms"] == 1 and taken["bytes_uploaded"] > 50 * MIB
    assert states(r) == []  # stored, then removed from the host
    v = r("store", "verify")
    assert "0 problems" in v.stdout
    guest_answers(r)


def test_publish_from_without_room_to_restore_is_refused_before_anything(lab, taken):
    r = lab
    images = r.home / "data" / "images"
    with Filled(r.home, 10 * MIB):
        p = r("publish", "--from", "mok", "--name", RESTORED, check=False)
    assert p.returncode == 8, p.stderr
    assert re.search(rf"no space left on {re.escape(str(images))}: need \d+\.\d MiB, have \d+\.\d MiB", p.stderr)
    assert not any(ns.startswith(f"rv-{RESTORED}-") for ns in namespaces())
    assert not images.exists() or list(images.iterdir()) == []


def test_home_is_private(lab, taken):
    r = lab
    loose = []
    for top in ("data", "state"):
        for p in (r.home / top).rglob("*"):
            if p.is_symlink() or p.is_socket():
                continue
            mode = p.stat().st_mode & 0o777
            if mode & 0o077 or (p.is_dir() and mode != 0o700):
                loose.append(f"{oct(mode)} {p.relative_to(r.home)}")
    assert loose == []
    assert (r.home / "state" / "state.db").stat().st_mode & 0o777 == 0o600
    assert any((r.home / "data" / "store" / "layers").iterdir())


def _top_layer(r: Ravel, snap: str) -> tuple[str, int]:
    m = json.loads(r("snapshots", "show", snap, "--json").stdout)
    layer = m["vms"][0]["disks"][0]["layers"][-1]
    return layer["sha256"], layer["size"]


def _flip(path: Path, offset: int) -> None:
    """Change one byte in place and put the modification time back (bit rot, not an edit)."""
    st = path.stat()
    with open(path, "r+b") as f:
        f.seek(offset)
        b = f.read(1)
        f.seek(offset)
        f.write(bytes([b[0] ^ 0x20]))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def test_a_damaged_layer_is_uploaded_again_by_the_next_snapshot(lab, taken):
    r = lab
    with r.console(APP, "a") as con:
        con.check("dd if=/dev/urandom of=/dev/vda bs=1M count=2 conv=fsync 2>&1", timeout=60)
    r("snapshot", APP, "--name", "d1")
    sha, size = _top_layer(r, "d1")
    _flip(r.home / "data" / "store" / "layers" / sha, size // 2)
    assert r("store", "verify", check=False).returncode == 8
    p = r("snapshot", APP, "--name", "d2", "--json")
    out = json.loads(p.stdout)
    assert f"layer {sha[:12]} was damaged in file://{r.home}/data/store" in p.stderr, p.stderr
    assert "uploaded again from this app's copy" in p.stderr
    assert out["layers_repaired"] == 1 and out["bytes_checked"] >= size
    assert sha in {layer["sha256"] for layer in json.loads(r("snapshots", "show", "d2", "--json").stdout)
                   ["vms"][0]["disks"][0]["layers"]}
    assert "0 problems" in r("store", "verify").stdout
    restored = restore(paths({"RAVEL_HOME": str(r.home)}), "d1")  # d1 restores again too
    assert restored.is_file()


def test_a_damaged_layer_whose_app_copy_is_damaged_too_fails_the_snapshot(lab, taken):
    r = lab
    sha, size = _top_layer(r, "d2")
    frozen = [f for f in layers_dir(r).glob("a-disk0.*.qcow2")
              if hashlib.sha256(f.read_bytes()).hexdigest() == sha]
    assert frozen
    stored = r.home / "data" / "store" / "layers" / sha
    _flip(stored, size // 2)
    _flip(frozen[0], size // 3)  # its hash cache still says it is the layer
    try:
        p = r("snapshot", APP, "--name", "d3", check=False)
    finally:
        _flip(frozen[0], size // 3)  # the guest's disk as it was
    assert p.returncode == 8, p.stderr
    assert f"layer {sha[:12]} is damaged" in p.stderr and f"this app's copy {frozen[0]} hashes to" in p.stderr
    assert "d3" not in snapshot_names(r) and store_leftovers(r) == []
    _flip(stored, size // 2)
    assert "0 problems" in r("store", "verify").stdout


def test_a_snapshot_killed_early_blocks_nothing(lab, taken):
    r = lab
    locks = r.home / "data" / "store" / "locks"
    proc = r.popen("snapshot", APP, "--name", "k1")
    try:
        wait_until(lambda: list(locks.glob("snapshot-*.json")) if locks.exists() else None, 60,
                   "the snapshot's marker", step=0.005)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.communicate(timeout=30)
    assert list(locks.glob("snapshot-*.json"))  # left behind, naming a dead pid
    host = os.uname().nodename
    p = r("store", "gc")
    assert f"cleared the marker of a snapshot k1 (pid {proc.pid} on {host}) in file://{r.home}/data/store: " \
           f"pid {proc.pid} has exited" in p.stderr, p.stderr
    assert re.search(r"removed \d+ layers", p.stdout) and list(locks.iterdir()) == []
    p = r("snapshot", APP, "--name", "k2")
    assert f"app '{APP}': cleared the lock of a snapshot (pid {proc.pid} on {host}): pid {proc.pid} has exited" \
        in p.stderr, p.stderr
    guest_answers(r)
