"""Content-addressed disk layers and snapshot manifests in a Store.

Keys: ``layers/<sha256>`` (a disk layer: a frozen qcow2 overlay, or a base image), stored once
whatever number of snapshots use it; ``manifests/<name>.json`` (a snapshot: the blueprint that
republishes it, each VM disk's layer chain with checksums); ``locks/<kind>-<id>.json`` (markers
that keep `gc` and a snapshot in progress from running at the same time).

Mutual exclusion without server-side locks: a snapshot writes its marker and then looks for a
gc marker; gc writes its marker and then looks for snapshot markers. Whichever writes second
sees the other (the stores read their own writes), so a gc never deletes a layer that a
snapshot in progress is about to reference.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

from .. import faults
from ..errors import StoreError
from ..model.spec import NAME_RE
from ..store.base import Store

MANIFEST_VERSION = 1
LAYERS = "layers/"
MANIFESTS = "manifests/"
LOCKS = "locks/"
STALE_LOCK_S = 24 * 3600.0  # a marker older than this is from a run that died; it is ignored
PARALLEL_UPLOADS = 4
HASH_CHUNK = 4 << 20
SNAPSHOT_NAME_RE = re.compile(NAME_RE)  # like app names: a snapshot publishes as an app of its name
SHA_RE = re.compile(r"^[0-9a-f]{64}$")


def layer_key(sha: str) -> str:
    return f"{LAYERS}{sha}"


def manifest_key(name: str) -> str:
    return f"{MANIFESTS}{name}.json"


def check_name(name: str) -> str:
    if not SNAPSHOT_NAME_RE.match(name):
        raise StoreError(f"{name!r} is not a valid snapshot name: lowercase letters, digits and dashes, at most 40")
    return name


def sha256_file(path: Path | str) -> tuple[str, int]:
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as fh:
        while True:
            chunk = fh.read(HASH_CHUNK)
            if not chunk:
                break
            h.update(chunk)
            size += len(chunk)
    return h.hexdigest(), size


# -- the manifest ------------------------------------------------------------------------------

@dataclass(frozen=True)
class Layer:
    sha256: str
    size: int
    format: str  # qcow2 for frozen overlays; a base image may be raw or vmdk


@dataclass(frozen=True)
class DiskChain:
    index: int
    virtual_size: int
    layers: tuple[Layer, ...]  # the base first, the newest frozen layer last


@dataclass(frozen=True)
class VmImage:
    name: str
    host: str
    disks: tuple[DiskChain, ...] = ()
    memory: Layer | None = None  # RAM and device state (`ravel snapshot --memory`)
    # with memory: the machine that state fits (machine.machine_signature)
    machine: tuple[str, ...] = ()


@dataclass(frozen=True)
class Manifest:
    name: str
    app: str
    blueprint: str  # the app as it ran, as a publishable blueprint (YAML)
    vms: tuple[VmImage, ...]
    created: float = 0.0
    provider: str = "local"
    source_blueprint: str = ""  # the text the app was published from, for reference
    pause_s: float | None = None
    kind: str = "snapshot"
    extra: Mapping[str, Any] = field(default_factory=dict)

    def layers(self) -> dict[str, Layer]:
        out: dict[str, Layer] = {}
        for vm in self.vms:
            for d in vm.disks:
                for layer in d.layers:
                    out[layer.sha256] = layer
            if vm.memory:
                out[vm.memory.sha256] = vm.memory
        return out

    def total_bytes(self) -> int:
        return sum(layer.size for layer in self.layers().values())

    def to_json(self) -> bytes:
        doc = {"version": MANIFEST_VERSION, **asdict(self)}
        doc["extra"] = dict(self.extra)
        return (json.dumps(doc, indent=1, sort_keys=True) + "\n").encode()

    @staticmethod
    def from_json(data: bytes, where: str) -> "Manifest":
        try:
            doc = json.loads(data)
            if doc.get("version") != MANIFEST_VERSION:
                raise ValueError(f"unsupported manifest version {doc.get('version')!r}")

            def layer(x: Mapping[str, Any]) -> Layer:
                if not SHA_RE.match(str(x["sha256"])):
                    raise ValueError(f"bad layer hash {x['sha256']!r}")
                return Layer(str(x["sha256"]), int(x["size"]), str(x["format"]))

            vms = tuple(VmImage(
                str(v["name"]), str(v.get("host", "")),
                tuple(DiskChain(int(d["index"]), int(d["virtual_size"]), tuple(layer(x) for x in d["layers"]))
                      for d in v["disks"]),
                layer(v["memory"]) if v.get("memory") else None,
                tuple(str(x) for x in v.get("machine") or ()),
            ) for v in doc["vms"])
            return Manifest(str(doc["name"]), str(doc["app"]), str(doc["blueprint"]), vms,
                            float(doc.get("created", 0)), str(doc.get("provider", "local")),
                            str(doc.get("source_blueprint", "")),
                            None if doc.get("pause_s") is None else float(doc["pause_s"]),
                            str(doc.get("kind", "snapshot")), dict(doc.get("extra") or {}))
        except (ValueError, KeyError, TypeError) as exc:
            raise StoreError(f"{where}: not a valid snapshot manifest: {exc}") from None


def read_manifest(store: Store, name: str) -> Manifest:
    key = manifest_key(check_name(name))
    if not store.exists(key):
        known = ", ".join(list_manifests(store)) or "none"
        raise StoreError(f"no snapshot named {name!r} in {store.url} (snapshots: {known})")
    return Manifest.from_json(store.get_bytes(key), f"{store.url}/{key}")


def list_manifests(store: Store) -> list[str]:
    return [k[len(MANIFESTS):-len(".json")] for k in store.list(MANIFESTS) if k.endswith(".json")]


# -- markers -----------------------------------------------------------------------------------

def _markers(store: Store, kind: str, now: float) -> list[tuple[str, dict[str, Any]]]:
    out = []
    for key in store.list(f"{LOCKS}{kind}-"):
        try:
            doc = json.loads(store.get_bytes(key))
        except (StoreError, ValueError):
            continue  # removed meanwhile, or half-written by a dead run
        if now - float(doc.get("time", 0)) < STALE_LOCK_S:
            out.append((key, doc))
    return out


def _mark(store: Store, kind: str, what: Mapping[str, Any]) -> str:
    key = f"{LOCKS}{kind}-{uuid.uuid4().hex[:12]}.json"
    store.put_bytes(key, json.dumps({"time": time.time(), "pid": os.getpid(), **what}).encode())
    return key


class Pending:
    """A snapshot in progress: its marker keeps gc away until `commit` or `abort`."""

    def __init__(self, store: Store, name: str) -> None:
        self.store = store
        self.name = check_name(name)
        self.key = _mark(store, "snapshot", {"name": name})
        gcs = _markers(store, "gc", time.time())
        if gcs:
            store.delete(self.key)
            raise StoreError(f"{store.url}: a garbage collection is running (pid {gcs[0][1].get('pid')})",
                             hint="snapshot again when `ravel store gc` has finished")

    def upload(self, files: Mapping[str, Path], parallel: int = PARALLEL_UPLOADS,
               progress: Callable[[str, int, bool], None] | None = None) -> int:
        """Upload the layers (sha256 -> local file) the store does not hold yet; returns the bytes
        sent. A hash already in the store is never sent again."""
        def one(item: tuple[str, Path]) -> int:
            sha, path = item
            key = layer_key(sha)
            if self.store.exists(key):
                if progress:
                    progress(sha, 0, False)
                return 0
            self.store.put(key, path)
            size = os.path.getsize(path)
            if progress:
                progress(sha, size, True)
            return size

        items = sorted(files.items())
        if not items:
            return 0
        with ThreadPoolExecutor(max_workers=max(1, min(parallel, len(items)))) as pool:
            return sum(pool.map(one, items))

    def commit(self, manifest: Manifest) -> int:
        """Write the manifest once every layer it names is in the store; returns its size."""
        for sha in manifest.layers():
            if not self.store.exists(layer_key(sha)):
                raise StoreError(f"{self.store.url}: layer {sha[:12]} vanished during the snapshot")
        data = manifest.to_json()
        self.store.put_bytes(manifest_key(self.name), data)
        self.store.delete(self.key)
        return len(data)

    def abort(self) -> None:
        self.store.delete(self.key)


# -- gc ----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class GcResult:
    removed: tuple[str, ...]
    freed_bytes: int
    kept: int


def gc(store: Store, dry_run: bool = False) -> GcResult:
    """Remove every layer no manifest references. Refuses while a snapshot is in progress."""
    mark = _mark(store, "gc", {})
    try:
        busy = _markers(store, "snapshot", time.time())
        if busy:
            names = ", ".join(sorted(str(d.get("name")) for _, d in busy))
            raise StoreError(f"{store.url}: a snapshot is in progress ({names}); nothing removed",
                             hint="run `ravel store gc` again when it has finished")
        layers = [k[len(LAYERS):] for k in store.list(LAYERS)]  # listed before the manifests
        referenced: set[str] = set()
        for name in list_manifests(store):
            referenced |= set(read_manifest(store, name).layers())
        removed, freed = [], 0
        for sha in layers:
            if sha in referenced:
                continue
            freed += store.size(layer_key(sha)) or 0
            if not dry_run:
                store.delete(layer_key(sha))
            removed.append(sha)
        return GcResult(tuple(removed), freed, len(layers) - len(removed))
    finally:
        store.delete(mark)


def remove_snapshot(store: Store, name: str) -> None:
    read_manifest(store, name)  # a clear error when there is no such snapshot
    store.delete(manifest_key(name))


# -- restore: fetch, verify, rebase ------------------------------------------------------------

@dataclass(frozen=True)
class Restored:
    path: Path  # the chain's top, every layer below it rebased onto local files
    format: str
    fetched_bytes: int  # bytes read from the store (0 when every layer was already here)


def fetch_chain(store: Store, chain: Iterable[Layer], cache: Path, what: str) -> Restored:
    """Fetch a layer chain (base first) into `cache`, verify each layer's sha256, and rebase each
    qcow2 layer onto its parent's local copy. A missing or corrupted layer is a StoreError naming
    it; nothing partial is left under its final name. Layers already here are checked again."""
    cache.mkdir(parents=True, exist_ok=True)
    parent: tuple[Path, str] | None = None
    fetched = 0
    layers = list(chain)
    if not layers:
        raise StoreError(f"{what}: the snapshot has no layers for this disk")
    for layer in layers:
        tag = hashlib.sha256(str(parent[0]).encode()).hexdigest()[:12] if parent else "root"
        final = cache / f"{layer.sha256}.{tag}.{layer.format}"
        if not _still_good(final):
            fetched += _fetch_one(store, layer, parent, final, what)
        parent = (final, layer.format)
    assert parent is not None
    return Restored(parent[0], parent[1], fetched)


def _still_good(final: Path) -> bool:
    side = final.with_name(final.name + ".sha256")
    try:
        want = side.read_text().strip()
    except FileNotFoundError:
        return False
    if not final.exists():
        return False
    return sha256_file(final)[0] == want


def _fetch_one(store: Store, layer: Layer, parent: tuple[Path, str] | None, final: Path, what: str) -> int:
    fd, tmp_name = tempfile.mkstemp(dir=final.parent, prefix=".fetch-")
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        try:
            store.get(layer_key(layer.sha256), tmp)
        except StoreError as exc:
            raise StoreError(f"{what}: layer {layer.sha256[:12]} is missing from {store.url}",
                             hint="the snapshot cannot be restored; was the layer deleted by hand?") from exc
        faults.point("restore.fetching")
        sha, size = sha256_file(tmp)
        if sha != layer.sha256 or size != layer.size:
            raise StoreError(f"{what}: layer {layer.sha256[:12]} in {store.url} is corrupted "
                             f"(sha256 {sha[:12]}, {size} bytes; the manifest says {layer.size} bytes)",
                             hint="nothing was started; the snapshot cannot be restored from this store")
        if parent is not None and layer.format == "qcow2":
            _rebase(tmp, parent[0], parent[1])
            sha = sha256_file(tmp)[0]  # the header now names the local parent
        os.chmod(tmp, 0o444)  # a base image: QEMU only ever reads it
        final.with_name(final.name + ".sha256").write_text(sha + "\n")
        os.replace(tmp, final)
        return size
    finally:
        if tmp.exists():
            tmp.unlink()


def _rebase(path: Path, backing: Path, fmt: str) -> None:
    argv = ["qemu-img", "rebase", "-u", "-f", "qcow2", "-b", str(backing), "-F", fmt, str(path)]
    try:
        p = subprocess.run(argv, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    except FileNotFoundError:
        raise StoreError("qemu-img is not installed", hint="apt-get install qemu-utils") from None
    if p.returncode != 0:
        raise StoreError(f"cannot rebase {path.name} onto {backing}: {p.stderr.strip()}")


def clear_cache_tmp(cache: Path) -> None:
    """Remove half-fetched files an interrupted restore left behind."""
    for f in cache.glob(".fetch-*"):
        try:
            f.unlink()
        except FileNotFoundError:
            pass


