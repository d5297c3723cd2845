"""Layers and manifests in a store (on a local directory; the same code runs on every backend),
and the host runtime's snapshot helpers, on real qcow2 files made with qemu-img."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from ravel.errors import StoreError
from ravel.host import snapshot as hs
from ravel.snapshot.gc import gc
from ravel.snapshot.layers import (DiskChain, Layer, Manifest, VmImage, fetch_chain, layer_key, read_manifest,
                                   remove_snapshot, sha256_file)
from ravel.snapshot.pending import Pending
from ravel.store.local import LocalStore


def qcow2(path: Path, backing: Path | None = None, size: str = "16M") -> Path:
    argv = ["qemu-img", "create", "-q", "-f", "qcow2"]
    if backing:
        argv += ["-b", str(backing), "-F", "qcow2"]
    subprocess.run(argv + [str(path)] + ([] if backing else [size]), check=True)
    return path


def write(path: Path, offset: int, data: bytes) -> None:
    subprocess.run(["qemu-io", "-f", "qcow2", "-c", f"write -P 0x{data[0]:02x} {offset} {len(data)}", str(path)],
                   check=True, capture_output=True)


def layer_of(path: Path) -> Layer:
    sha, size = sha256_file(path)
    return Layer(sha, size, "qcow2")


def manifest(name: str, layers: list[Layer]) -> Manifest:
    return Manifest(name, "app", "name: x\nvms: {a: {}}\n", (VmImage("a", "host-1", (DiskChain(0, 16 << 20, tuple(layers)),)),))


@pytest.fixture
def chain(tmp_path):
    base = qcow2(tmp_path / "base.qcow2")
    write(base, 0, b"\xaa" * 65536)
    top = qcow2(tmp_path / "top.qcow2", base)
    write(top, 65536, b"\xbb" * 65536)
    return base, top


def test_manifest_json_roundtrip():
    m = manifest("s1", [Layer("a" * 64, 10, "qcow2"), Layer("b" * 64, 20, "qcow2")])
    assert Manifest.from_json(m.to_json(), "x") == m
    with pytest.raises(StoreError, match="x: not a valid snapshot manifest"):
        Manifest.from_json(b'{"version": 1, "name": "s"}', "x")
    with pytest.raises(StoreError, match="bad layer hash"):
        Manifest.from_json(m.to_json().replace(b"a" * 64, b"zz"), "x")


def test_upload_never_stores_a_hash_twice(tmp_path, chain):
    store = LocalStore(tmp_path / "store")
    base, top = chain
    files = {layer_of(base).sha256: base, layer_of(top).sha256: top}
    p = Pending(store, "s1")
    first = p.upload(files)
    p.commit(manifest("s1", [layer_of(base), layer_of(top)]))
    assert first == base.stat().st_size + top.stat().st_size
    p2 = Pending(store, "s2")
    checks = p2.check({sha: f.stat().st_size for sha, f in files.items()})
    assert all(c.ok for c in checks.values())
    assert p2.upload({sha: f for sha, f in files.items() if not checks[sha].ok}) == 0
    p2.commit(manifest("s2", [layer_of(base), layer_of(top)]))
    assert len(list(store.list("layers/"))) == 2
    assert list(store.list("locks/")) == []


def test_restore_is_verified_rebased_and_identical(tmp_path, chain):
    store = LocalStore(tmp_path / "store")
    base, top = chain
    layers = [layer_of(base), layer_of(top)]
    p = Pending(store, "s1")
    p.upload({l.sha256: f for l, f in zip(layers, (base, top))})
    p.commit(manifest("s1", layers))
    r = fetch_chain(store, read_manifest(store, "s1").vms[0].disks[0].layers, tmp_path / "cache", "disk")
    info = json.loads(subprocess.run(["qemu-img", "info", "--backing-chain", "--output=json", str(r.path)],
                                     capture_output=True, text=True, check=True).stdout)
    assert [Path(i["filename"]).parent for i in info] == [tmp_path / "cache"] * 2
    cmp = subprocess.run(["qemu-img", "compare", str(top), str(r.path)], capture_output=True, text=True)
    assert cmp.returncode == 0, cmp.stdout + cmp.stderr
    again = fetch_chain(store, layers, tmp_path / "cache", "disk")
    assert again.path == r.path and again.fetched_bytes == 0


def test_corrupted_and_missing_layers_are_caught(tmp_path, chain):
    store = LocalStore(tmp_path / "store")
    base, top = chain
    layers = [layer_of(base), layer_of(top)]
    p = Pending(store, "s1")
    p.upload({l.sha256: f for l, f in zip(layers, (base, top))})
    p.commit(manifest("s1", layers))
    blob = store.local_path(layer_key(layers[1].sha256))
    data = bytearray(blob.read_bytes())
    data[70000] ^= 0x01
    blob.write_bytes(bytes(data))
    with pytest.raises(StoreError, match=f"VM a disk 0: layer {layers[1].sha256[:12]} .* is corrupted"):
        fetch_chain(store, layers, tmp_path / "cache", "VM a disk 0")
    assert not any(f.name.startswith(layers[1].sha256) for f in (tmp_path / "cache").iterdir())
    blob.unlink()
    with pytest.raises(StoreError, match="is missing"):
        fetch_chain(store, layers, tmp_path / "cache", "VM a disk 0")


def test_gc_keeps_referenced_layers_and_waits_for_snapshots(tmp_path, chain):
    store = LocalStore(tmp_path / "store")
    base, top = chain
    lb, lt = layer_of(base), layer_of(top)
    for name, layers in (("s1", [lb]), ("s2", [lb, lt])):
        p = Pending(store, name)
        p.upload({l.sha256: (base if l is lb else top) for l in layers})
        p.commit(manifest(name, layers))
    store.put_bytes(layer_key("c" * 64), b"orphan")
    r = gc(store)
    assert r.removed == ("c" * 64,) and r.kept == 2
    remove_snapshot(store, "s2")
    running = Pending(store, "s3")  # a snapshot in progress: gc must not touch anything
    with pytest.raises(StoreError, match="a snapshot is in progress"):
        gc(store)
    assert store.exists(layer_key(lt.sha256))
    running.abort()
    assert gc(store).removed == (lt.sha256,)
    assert store.exists(layer_key(lb.sha256))
    assert list(store.list("locks/")) == []


def test_snapshot_refused_while_gc_runs(tmp_path):
    store = LocalStore(tmp_path / "store")
    store.put_bytes("locks/gc-1.json", json.dumps({"time": 9e12, "pid": 1}).encode())
    with pytest.raises(StoreError, match="garbage collection is running"):
        Pending(store, "s1")
    assert list(store.list("locks/snapshot-")) == []


# -- host runtime helpers ------------------------------------------------------------------------

def test_qcow2_has_data(tmp_path, chain):
    base, top = chain
    empty = qcow2(tmp_path / "empty.qcow2", top)
    assert hs.qcow2_has_data(str(base)) and hs.qcow2_has_data(str(top))
    assert not hs.qcow2_has_data(str(empty))


def test_drive_files():
    argv = ["qemu", "-drive", "file=/d/a-disk0.qcow2,if=none,id=disk0", "-m", "1", "-drive", "file=/d/b.qcow2,id=disk1"]
    assert hs.drive_files(argv) == ["/d/a-disk0.qcow2", "/d/b.qcow2"]


def test_settle_moves_the_live_overlay_into_place(tmp_path, chain):
    base, top = chain
    disk = tmp_path / "vm-disk0.qcow2"
    disk.write_bytes(top.read_bytes())
    layers = tmp_path / "layers"
    layers.mkdir()
    live = qcow2(layers / "vm-disk0.s1.top.qcow2", top)
    (layers / "vm-disk0.qcow2.top").write_text(json.dumps({"path": str(live)}))
    assert hs.current_top(str(disk)) == str(live)
    assert hs.settle([str(disk)]) == ["vm-disk0.s1.top.qcow2 -> vm-disk0.qcow2"]
    assert not live.exists() and hs.current_top(str(disk)) == str(disk)
    assert hs.settle([str(disk)]) == []  # idempotent
    assert json.loads(subprocess.run(["qemu-img", "info", "--output=json", str(disk)], capture_output=True,
                                     text=True).stdout)["backing-filename"] == str(top)
