"""One contract for every Store backend: a local directory, S3 (moto's server) and GCS (an
emulator), each a real server on 127.0.0.1 (the `store` fixture: conftest.py)."""

from __future__ import annotations

import hashlib
import os
import threading

import pytest

from ravel.errors import StoreError
from ravel.paths import paths
from ravel.store import open_store
from ravel.store.base import PART_SIZE, Space



def test_put_get_roundtrip(store, tmp_path):
    src = tmp_path / "src"
    src.write_bytes(b"hello layer")
    store.put("layers/abc", src)
    assert store.exists("layers/abc")
    assert store.size("layers/abc") == 11
    dest = tmp_path / "dest"
    store.get("layers/abc", dest)
    assert dest.read_bytes() == b"hello layer"
    assert store.get_bytes("layers/abc") == b"hello layer"


def test_put_bytes_replaces(store):
    store.put_bytes("manifests/a.json", b"one")
    store.put_bytes("manifests/a.json", b"two")
    assert store.get_bytes("manifests/a.json") == b"two"


def test_missing_key_is_a_clear_error(store, tmp_path):
    assert not store.exists("layers/nope")
    assert store.size("layers/nope") is None
    with pytest.raises(StoreError, match="layers/nope"):
        store.get("layers/nope", tmp_path / "x")
    with pytest.raises(StoreError, match="layers/nope"):
        store.get_bytes("layers/nope")
    assert not (tmp_path / "x").exists() or (tmp_path / "x").stat().st_size == 0


def test_delete_is_idempotent(store):
    store.put_bytes("layers/x", b"1")
    store.delete("layers/x")
    store.delete("layers/x")
    assert not store.exists("layers/x")


def test_list_by_prefix_sorted(store):
    for k in ("layers/b", "layers/a", "manifests/m.json", "locks/gc-1"):
        store.put_bytes(k, b"x")
    assert list(store.list("layers/")) == ["layers/a", "layers/b"]
    assert list(store.list()) == ["layers/a", "layers/b", "locks/gc-1", "manifests/m.json"]
    assert list(store.list("nothing/")) == []


def test_large_blob_in_parts(store, tmp_path):
    # above the part size: S3 uses multipart, GCS ranged parts, local a streamed copy
    src = tmp_path / "big"
    data = os.urandom(PART_SIZE + 12345)
    src.write_bytes(data)
    store.put("layers/big", src)
    assert store.size("layers/big") == len(data)
    dest = tmp_path / "big.out"
    store.get("layers/big", dest)
    assert hashlib.sha256(dest.read_bytes()).digest() == hashlib.sha256(data).digest()
    # read back in parts too, hashed in order
    assert store.digest("layers/big") == (hashlib.sha256(data).hexdigest(), len(data))


def test_stat_and_digest(store):
    store.put_bytes("layers/a", b"one")
    info = store.stat("layers/a")
    assert info is not None and info.size == 3
    assert store.digest("layers/a") == (hashlib.sha256(b"one").hexdigest(), 3)
    assert store.stat("layers/a") == info  # reading changes nothing
    store.put_bytes("layers/a", b"two")  # same size, other bytes: another stamp
    again = store.stat("layers/a")
    assert again is not None and again.size == 3 and again.stamp != info.stamp
    assert store.digest("layers/a")[0] == hashlib.sha256(b"two").hexdigest()
    assert store.stat("layers/nope") is None
    with pytest.raises(StoreError, match="layers/nope"):
        store.digest("layers/nope")


def test_free_space_where_the_store_can_fill(store):
    space = store.free_space()
    if store.url.startswith("file://"):
        st = os.statvfs(store.url[len("file://"):].rsplit("/", 1)[0])
        assert isinstance(space, Space) and space.where == store.url[len("file://"):]
        assert abs(space.free - st.f_bavail * st.f_frsize) < 64 << 20
    else:
        assert space is None  # an object store does not fill up
    assert store.reread_every_s == (0 if store.url.startswith("file://") else 7 * 24 * 3600)


def test_parallel_puts(store, tmp_path):
    def put(i: int) -> None:
        f = tmp_path / f"f{i}"
        f.write_bytes(str(i).encode() * 100)
        store.put(f"layers/p{i}", f)

    threads = [threading.Thread(target=put, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert list(store.list("layers/p")) == [f"layers/p{i}" for i in range(6)]


@pytest.mark.parametrize("key", ["../x", "/abs", "a//b", "", "a/../b", "sp ace"])
def test_bad_keys_refused(store, key):
    with pytest.raises(StoreError, match="invalid store key"):
        store.put_bytes(key, b"x")
    for look in (store.stat, store.digest):
        with pytest.raises(StoreError, match="invalid store key"):
            look(key)


def test_store_urls(tmp_path):
    p = paths({"RAVEL_HOME": str(tmp_path)})
    assert open_store(None, p).url == f"file://{tmp_path}/data/store"
    assert open_store(str(tmp_path / "s"), p).url == f"file://{tmp_path}/s"
    for bad in ("ftp://x/y", "s3://", "file://host/path"):
        with pytest.raises(StoreError):
            open_store(bad, p)
