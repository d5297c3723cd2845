"""Content-addressed disk layers and snapshot manifests in a Store.

Keys: ``layers/<sha256>`` (a disk layer: a frozen qcow2 overlay, or a base image), stored once
whatever number of snapshots use it; ``manifests/<name>.json`` (a snapshot: the blueprint that
republishes it, each VM disk's layer chain with checksums); ``locks/<kind>-<id>.json`` (markers
that keep `gc` and a snapshot in progress from running at the same time: markers.py);
``checks/<sha>.json`` (when a layer was last read back whole: integrity.py).

A snapshot in progress is pending.py; removing unreferenced layers is gc.py.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

from .. import faults
from ..errors import StoreError
from ..model.spec import NAME_RE
from ..paths import private_dir
from ..store.base import Store

MANIFEST_VERSION = 1
LAYERS = "layers/"
MANIFESTS = "manifests/"
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
        except (ValueError, KeyError, TypeError, AttributeError, RecursionError) as exc:
            why = "nested too deeply" if isinstance(exc, RecursionError) else exc
            raise StoreError(f"{where}: not a valid snapshot manifest: {why}") from None


def read_manifest(store: Store, name: str) -> Manifest:
    key = manifest_key(check_name(name))
    if not store.exists(key):
        known = ", ".join(list_manifests(store)) or "none"
        raise StoreError(f"no snapshot named {name!r} in {store.url} (snapshots: {known})")
    return Manifest.from_json(store.get_bytes(key), f"{store.url}/{key}")


def list_manifests(store: Store) -> list[str]:
    return [k[len(MANIFESTS):-len(".json")] for k in store.list(MANIFESTS) if k.endswith(".json")]


def read_manifests(store: Store) -> tuple[list[Manifest], list[str]]:
    """Every snapshot in the store, each read on its own: one that cannot be read is a problem
    reported (second list) and skipped, never the end of the listing."""
    good, bad = [], []
    for key in store.list(MANIFESTS):
        if not key.endswith(".json"):
            continue
        try:
            good.append(Manifest.from_json(store.get_bytes(key), f"{store.url}/{key}"))
        except StoreError as exc:
            bad.append(exc.message)
    return good, bad


def remove_snapshot(store: Store, name: str) -> None:
    key = manifest_key(check_name(name))
    if not store.exists(key):  # a clear error when there is no such snapshot; a damaged one goes too
        read_manifest(store, name)
    store.delete(key)


# -- restore: fetch, verify, rebase ------------------------------------------------------------

@dataclass(frozen=True)
class Restored:
    path: Path  # the chain's top, every layer below it rebased onto local files
    format: str
    fetched_bytes: int  # bytes read from the store (0 when every layer was already here)


def chain_files(chain: Iterable[Layer], cache: Path) -> list[tuple[Layer, Path]]:
    """Where each layer of a chain (base first) lives once fetched: the same layer over
    another parent is another file (its header names that parent)."""
    out: list[tuple[Layer, Path]] = []
    parent: Path | None = None
    for layer in chain:
        tag = hashlib.sha256(str(parent).encode()).hexdigest()[:12] if parent else "root"
        parent = cache / f"{layer.sha256}.{tag}.{layer.format}"
        out.append((layer, parent))
    return out


def bytes_to_fetch(chains: Iterable[Iterable[Layer]], cache: Path) -> int:
    """What fetching these chains into `cache` writes at most: every layer not there yet."""
    files = {final: layer.size for chain in chains for layer, final in chain_files(chain, cache)}
    return sum(size for final, size in files.items()
               if not (final.exists() and final.with_name(final.name + ".sha256").exists()))


def fetch_chain(store: Store, chain: Iterable[Layer], cache: Path, what: str) -> Restored:
    """Fetch a layer chain (base first) into `cache`, verify each layer's sha256, and rebase each
    qcow2 layer onto its parent's local copy. A missing or corrupted layer is a StoreError naming
    it; nothing partial is left under its final name. Layers already here are checked again."""
    private_dir(cache)
    parent: tuple[Path, str] | None = None
    fetched = 0
    layers = chain_files(chain, cache)
    if not layers:
        raise StoreError(f"{what}: the snapshot has no layers for this disk")
    for layer, final in layers:
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
            if store.exists(layer_key(layer.sha256)):
                raise
            raise StoreError(f"{what}: layer {layer.sha256[:12]} is missing from {store.url}",
                             hint="the snapshot cannot be restored; was the layer deleted by hand?") from exc
        except OSError as exc:  # the local store copies straight into the cache
            raise StoreError(f"{what}: cannot fetch layer {layer.sha256[:12]} into {final.parent}: "
                             f"{exc.strerror or exc}") from None
        faults.point("restore.fetching")
        sha, size = sha256_file(tmp)
        if sha != layer.sha256 or size != layer.size:
            raise StoreError(f"{what}: layer {layer.sha256[:12]} in {store.url} is corrupted "
                             f"(sha256 {sha[:12]}, {size} bytes; the manifest says {layer.size} bytes)",
                             hint="nothing was started; the snapshot cannot be restored from this store")
        if parent is not None and layer.format == "qcow2":
            _rebase(tmp, parent[0], parent[1])
            sha = sha256_file(tmp)[0]  # the header now names the local parent
        os.chmod(tmp, 0o400)  # a base image: QEMU (root) only ever reads it
        side = final.with_name(final.name + ".sha256")
        try:
            os.replace(tmp, final)
            # after the file: a file without its sum is fetched again, never trusted
            fd = os.open(side, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(sha + "\n")
        except OSError as exc:
            side.unlink(missing_ok=True)
            final.unlink(missing_ok=True)
            raise StoreError(f"{what}: cannot write {final}: {exc.strerror or exc}") from None
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


