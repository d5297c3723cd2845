"""What a snapshot builds on is whole, on every store (a local directory, S3 on moto's server,
GCS on its emulator; the `store` fixture: conftest.py): a layer already in the store is checked before a new snapshot references
it and is uploaded again when damaged (issue 15, defect 2); a damaged manifest is skipped, not
fatal; `ravel store verify` finds and mends; markers of dead owners never block (defect 3)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from ravel import owners
from ravel.errors import StoreError
from ravel.snapshot import markers
from ravel.snapshot.gc import gc
from ravel.snapshot.integrity import check_layer, check_record_key, verify_store
from ravel.snapshot.layers import (DiskChain, Layer, Manifest, VmImage, fetch_chain, layer_key, read_manifests,
                                   remove_snapshot)
from ravel.snapshot.pending import Pending


def blob(tmp_path: Path, name: str, size: int = 300_000) -> tuple[Layer, Path]:
    f = tmp_path / name
    f.write_bytes(os.urandom(size))
    return Layer(hashlib.sha256(f.read_bytes()).hexdigest(), size, "raw"), f


def manifest(name: str, layers: list[Layer]) -> Manifest:
    return Manifest(name, "app", "name: app\nvms: {a: {}}\n",
                    (VmImage("a", "host-1", (DiskChain(0, 1 << 20, tuple(layers)),)),))


def snapshot(store, name: str, files: dict[Layer, Path], events: list | None = None) -> dict:
    """What take_snapshot does with the store: check, upload what is missing or damaged,
    commit. Returns the checks."""
    p = Pending(store, name, emit=(events.append if events is not None else lambda e: None))
    try:
        checks = p.check({layer.sha256: layer.size for layer in files})
        need = {layer.sha256: f for layer, f in files.items() if not checks[layer.sha256].ok}
        damaged = {sha: c for sha, c in checks.items() if c.status == "damaged"}
        p.upload(need, damaged)
        p.commit(manifest(name, list(files)))
    except BaseException:
        p.abort()
        raise
    return checks


def damage(store, layer: Layer) -> None:
    """Other bytes of the same size under the layer's key. On a local directory the bytes are
    changed in place and the modification time put back: only reading the file tells."""
    key = layer_key(layer.sha256)
    if store.url.startswith("file://"):
        path = Path(store.url[len("file://"):]) / key
        st = path.stat()
        with open(path, "r+b") as f:
            f.seek(layer.size // 2)
            byte = f.read(1)
            f.seek(layer.size // 2)
            f.write(bytes([byte[0] ^ 0x40]))
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    else:
        store.put_bytes(key, os.urandom(layer.size))


def test_a_damaged_layer_is_uploaded_again_before_a_snapshot_references_it(store, tmp_path):
    a, fa = blob(tmp_path, "a")
    b, fb = blob(tmp_path, "b")
    first = snapshot(store, "s1", {a: fa, b: fb})
    assert {c.status for c in first.values()} == {"missing"}
    damage(store, b)
    events: list = []
    second = snapshot(store, "s2", {a: fa, b: fb}, events)
    assert second[a.sha256].ok
    assert second[b.sha256].status == "damaged" and "hash to" in second[b.sha256].why
    said = [e.message for e in events if "was damaged" in e.message]
    assert len(said) == 1 and b.sha256[:12] in said[0] and "uploaded again" in said[0]
    assert store.digest(layer_key(b.sha256)) == (b.sha256, b.size)
    # and the snapshot restores: every layer fetched and verified
    r = fetch_chain(store, [a, b], tmp_path / "cache", "VM a disk 0")
    assert r.path.read_bytes() == fb.read_bytes()
    assert list(store.list("locks/")) == []


def test_a_damaged_layer_without_a_good_copy_fails_the_snapshot_naming_it(store, tmp_path):
    a, fa = blob(tmp_path, "a")
    snapshot(store, "s1", {a: fa})
    damage(store, a)
    fa.write_bytes(os.urandom(a.size))  # the app's copy changed too
    with pytest.raises(StoreError, match=rf"layer {a.sha256[:12]} is damaged .* hashes to") as exc:
        snapshot(store, "s2", {a: fa})
    assert "s2" not in [m.name for m in read_manifests(store)[0]]
    assert "not taken" in (exc.value.hint or "")
    assert list(store.list("locks/")) == []


def test_a_checked_layer_is_read_back_again_as_the_store_says(store, tmp_path):
    # local: every time (cheap); object stores: once a week, or at once when the blob changed
    a, fa = blob(tmp_path, "a")
    snapshot(store, "s1", {a: fa})
    local = store.url.startswith("file://")
    first = check_layer(store, a.sha256, a.size)
    assert first.ok and first.read_bytes == (a.size if local else 0)  # the upload counts as a check
    assert not local or list(store.list("checks/")) == []
    if not local:
        stale = json.loads(store.get_bytes(check_record_key(a.sha256)))
        stale["time"] -= store.reread_every_s + 1
        store.put_bytes(check_record_key(a.sha256), json.dumps(stale).encode())
        aged = check_layer(store, a.sha256, a.size)
        assert aged.ok and aged.read_bytes == a.size
        assert check_layer(store, a.sha256, a.size).read_bytes == 0  # recorded again
    store.put_bytes(layer_key(a.sha256), os.urandom(a.size))
    assert check_layer(store, a.sha256, a.size).status == "damaged"
    store.put_bytes(layer_key(a.sha256), b"short")
    truncated = check_layer(store, a.sha256, a.size)
    assert truncated.status == "damaged" and truncated.why == f"it holds 5 bytes, not {a.size}"


def test_a_damaged_manifest_is_skipped_and_its_layers_kept(store, tmp_path):
    a, fa = blob(tmp_path, "a")
    b, fb = blob(tmp_path, "b")
    snapshot(store, "good", {a: fa})
    snapshot(store, "half", {b: fb})
    whole = store.get_bytes("manifests/half.json")
    store.put_bytes("manifests/half.json", whole[: whole.index(b.sha256.encode()) + 64])  # cut after b's hash
    store.put_bytes("manifests/junk.json", b"\x00\xff not json")
    store.put_bytes("manifests/list.json", b"[1, 2]")
    good, bad = read_manifests(store)
    assert [m.name for m in good] == ["good"]
    assert len(bad) == 3 and all("not a valid snapshot manifest" in p for p in bad)
    assert any("manifests/list.json" in p for p in bad)
    r = gc(store)
    assert len(r.unreadable) == 3 and r.removed == ()
    assert store.exists(layer_key(b.sha256))  # named by the damaged manifest: kept
    remove_snapshot(store, "junk")  # a damaged snapshot can be removed by name
    assert not store.exists("manifests/junk.json")


def test_verify_finds_and_repair_mends(store, tmp_path):
    a, fa = blob(tmp_path, "a")
    b, fb = blob(tmp_path, "b")
    c, fc = blob(tmp_path, "c")
    snapshot(store, "s1", {a: fa, b: fb})
    snapshot(store, "s2", {b: fb, c: fc})
    damage(store, a)
    damage(store, b)
    store.delete(layer_key(c.sha256))
    r = verify_store(store)
    assert r.layers == 2 and r.manifests == 2
    assert sorted(r.problems) == sorted([
        f"layer {a.sha256[:12]} is damaged: its bytes hash to {hashlib.sha256(store.get_bytes(layer_key(a.sha256))).hexdigest()[:12]} ({a.size} bytes): snapshot s1 cannot be restored",
        f"layer {b.sha256[:12]} is damaged: its bytes hash to {hashlib.sha256(store.get_bytes(layer_key(b.sha256))).hexdigest()[:12]} ({b.size} bytes): snapshots s1, s2 cannot be restored",
        f"layer {c.sha256[:12]} is missing: snapshot s2 cannot be restored"])
    assert r.bytes_read == a.size + b.size
    # copies on this machine: b's and c's are good, a's has changed since
    fa.write_bytes(b"changed")
    mended = verify_store(store, repair=True, copies=lambda: {a.sha256: fa, b.sha256: fb, c.sha256: fc})
    assert len(mended.repaired) == 3
    assert f"layer {b.sha256[:12]}: uploaded again from {fb}" in mended.repaired
    assert f"layer {c.sha256[:12]}: uploaded again from {fc}" in mended.repaired
    assert any(x.startswith(f"layer {a.sha256[:12]}: removed (damaged") for x in mended.repaired)
    assert mended.problems == [f"layer {a.sha256[:12]} is missing (removed: damaged): snapshot s1 cannot be restored"]
    after = verify_store(store)
    assert after.problems == [f"layer {a.sha256[:12]} is missing: snapshot s1 cannot be restored"]
    assert store.digest(layer_key(b.sha256)) == (b.sha256, b.size)
    assert list(store.list("locks/")) == []


def _dead_pid() -> int:
    p = subprocess.Popen(["true"])
    p.wait(10)
    return p.pid


def _put_marker(store, kind: str, doc: dict) -> str:
    key = f"locks/{kind}-{os.urandom(6).hex()}.json"
    store.put_bytes(key, json.dumps(doc).encode())
    return key


def test_markers_of_dead_owners_never_block(store, tmp_path):
    me = owners.me()
    now = time.time()
    events: list = []
    # a snapshot killed early (its pid exited), one from before owners were recorded, and one
    # from another machine that stopped beating: gc clears each at once, saying whose and why
    dead = _put_marker(store, "snapshot", {"name": "killed", **me.doc(), "pid": _dead_pid(), "time": now, "beat": now})
    legacy = _put_marker(store, "snapshot", {"name": "old", "pid": os.getpid(), "time": now - 10 * 24 * 3600})
    remote = _put_marker(store, "snapshot", {"name": "far", **me.doc(), "host": "elsewhere", "time": now - 900,
                                             "beat": now - markers.LEASE_S - 1})
    _put_marker(store, "gc", {})  # unreadable (no owner): cleared too
    store.put_bytes("locks/gc-garbage.json", b"{half")
    r = gc(store, emit=events.append)
    assert r.kept == 0
    said = sorted(e.message for e in events)
    assert len(said) == 5, said
    assert any("snapshot killed" in m and "has exited" in m for m in said)
    assert any("snapshot old" in m and "another process now" in m for m in said)
    assert any("snapshot far" in m and "no heartbeat from elsewhere" in m for m in said)
    for key in (dead, legacy, remote):
        assert not store.exists(key)
    assert list(store.list("locks/")) == []


def test_markers_of_live_owners_are_respected(store, tmp_path):
    now = time.time()
    live = Pending(store, "running")
    with pytest.raises(StoreError, match="a snapshot is in progress"):
        gc(store)
    live.abort()
    remote = _put_marker(store, "snapshot", {"name": "far", **owners.me().doc(), "host": "elsewhere",
                                             "time": now - 3600, "beat": now - 5})
    with pytest.raises(StoreError, match=r"snapshot far \(pid \d+ on elsewhere\)"):
        gc(store)
    store.delete(remote)
    running = markers.Marker(store, "gc", {}, heartbeat_s=0.2)
    try:
        with pytest.raises(StoreError, match="a garbage collection is running"):
            Pending(store, "s1")
        first = json.loads(store.get_bytes(running.key))["beat"]
        deadline = time.monotonic() + 10
        while json.loads(store.get_bytes(running.key))["beat"] == first and time.monotonic() < deadline:
            time.sleep(0.1)
        assert json.loads(store.get_bytes(running.key))["beat"] > first  # it beats
    finally:
        running.release()
    assert list(store.list("locks/")) == []
