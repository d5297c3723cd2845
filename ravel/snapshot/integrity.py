"""Layers already in a store are checked again before a new snapshot references them, and
`ravel store verify` checks (and with --repair mends) a whole store.

A layer is named by its sha256, so a blob under ``layers/<sha>`` is good exactly when its
bytes hash to that name (and have the size the snapshot recorded). A full check reads the blob
back and hashes it (`Store.digest`). Where that is cheap (a local directory: every layer, every
snapshot) it is always done; an object store would download every layer of every snapshot
again, so there a full check is recorded (``checks/<sha>.json``: the blob's stamp and when) and
a layer is trusted while its stamp is unchanged and the last full check is younger than the
store's `reread_every_s` (a week). A replaced or truncated blob changes its stamp or size and is
read back at once; `ravel store verify` reads back everything.

A damaged layer is never referenced by a new snapshot: the snapshot uploads it again from the
app's own copy (checked against the hash first), or fails naming it.
"""

from __future__ import annotations

import json
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Mapping

from ..errors import StoreError
from ..events import Emit, Event, quiet
from ..host.snapshot import HASHES_FILE
from ..paths import Paths
from ..store.base import Store
from .layers import LAYERS, MANIFESTS, SHA_RE, Manifest, layer_key, sha256_file

CHECKS = "checks/"
PARALLEL_CHECKS = 4


def check_record_key(sha: str) -> str:
    return f"{CHECKS}{sha}.json"


@dataclass(frozen=True)
class LayerCheck:
    sha: str
    status: str  # ok | missing | damaged
    why: str = ""  # what is wrong, for damaged
    read_bytes: int = 0  # read back to check it (0: trusted by its stamp, or not there)

    @property
    def ok(self) -> bool:
        return self.status == "ok"


def _damaged(sha: str, why: str, read: int = 0) -> LayerCheck:
    return LayerCheck(sha, "damaged", why, read)


def check_layer(store: Store, sha: str, size: int | None = None, full: bool = False,
                now: float | None = None) -> LayerCheck:
    """Is ``layers/<sha>`` in `store` whole? `size`: the size a manifest recorded, when known;
    `full`: read it back whatever its record says."""
    key = layer_key(sha)
    info = store.stat(key)
    if info is None:
        return LayerCheck(sha, "missing")
    if size is not None and info.size != size:
        return _damaged(sha, f"it holds {info.size} bytes, not {size}")
    now = time.time() if now is None else now
    if not full and store.reread_every_s > 0:
        rec = _record(store, sha)
        if rec is not None and rec.get("stamp") == info.stamp and now - float(rec.get("time", 0)) < store.reread_every_s:
            return LayerCheck(sha, "ok")
    try:
        got, n = store.digest(key)
    except StoreError as exc:
        return _damaged(sha, f"it cannot be read back: {exc.message}")
    if got != sha or (size is not None and n != size):
        return _damaged(sha, f"its bytes hash to {got[:12]} ({n} bytes)", n)
    if store.reread_every_s > 0:
        # the stamp from before the read: a put meanwhile changes it, and the next look reads again
        record_check(store, sha, info.stamp, now)
    return LayerCheck(sha, "ok", read_bytes=n)


def _record(store: Store, sha: str) -> dict | None:
    try:
        doc = json.loads(store.get_bytes(check_record_key(sha)))
    except (StoreError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def record_check(store: Store, sha: str, stamp: str, now: float | None = None) -> None:
    """Note that the blob of `sha` with `stamp` was found (or made) whole now."""
    if store.reread_every_s > 0:
        doc = {"stamp": stamp, "time": time.time() if now is None else now}
        store.put_bytes(check_record_key(sha), json.dumps(doc).encode())


def record_put(store: Store, sha: str) -> None:
    """After a put of bytes known to hash to `sha`: the blob is whole as of now."""
    if store.reread_every_s > 0:
        info = store.stat(layer_key(sha))
        if info is not None:
            record_check(store, sha, info.stamp)


def check_layers(store: Store, sizes: Mapping[str, int | None], full: bool = False,
                 parallel: int = PARALLEL_CHECKS) -> dict[str, LayerCheck]:
    """`check_layer` for each sha -> expected size, in parallel."""
    items = sorted(sizes.items())
    if not items:
        return {}
    now = time.time()
    with ThreadPoolExecutor(max_workers=max(1, min(parallel, len(items)))) as pool:
        return {c.sha: c for c in pool.map(lambda kv: check_layer(store, kv[0], kv[1], full, now), items)}


def upload_checked(store: Store, sha: str, src: Path, what: str) -> None:
    """Put `src` as layer `sha` once it is known to hash to it (a repair's source may be as
    damaged as the blob it replaces)."""
    got, _ = sha256_file(src)
    if got != sha:
        raise StoreError(f"layer {sha[:12]}: {what} {src} hashes to {got[:12]} now, so it cannot replace it")
    store.put(layer_key(sha), src)
    record_put(store, sha)


# -- ravel store verify ------------------------------------------------------------------------

@dataclass
class VerifyResult:
    url: str
    layers: int = 0  # layers read back
    bytes_read: int = 0
    manifests: int = 0  # manifests that parse
    problems: list[str] = field(default_factory=list)  # what is still wrong
    repaired: list[str] = field(default_factory=list)  # what --repair mended
    seconds: float = 0.0


def local_copies(paths: Paths) -> dict[str, Path]:
    """sha256 -> a file on this machine that should hold those bytes: frozen layers and base
    images of the local apps (as their hosts' hash caches name them, while unchanged since),
    and restored base layers (not rebased, so still the stored bytes). Each is hashed again
    before it is used."""
    out: dict[str, Path] = {}
    for cache in sorted(paths.data.glob(f"apps/*/*/layers/{HASHES_FILE}")):
        try:
            entries = json.loads(cache.read_text())
        except (OSError, ValueError):
            continue
        for path, e in entries.items() if isinstance(entries, dict) else ():
            try:
                st = os.stat(path)
                if e["key"] == [st.st_size, st.st_mtime_ns, st.st_ino] and SHA_RE.match(e["sha256"]):
                    out.setdefault(e["sha256"], Path(path))
            except (OSError, KeyError, TypeError):
                continue
    for f in sorted((paths.data / "images").glob("*.root.*")):
        sha = f.name.split(".", 1)[0]
        if SHA_RE.match(sha) and not f.name.endswith(".sha256"):
            out.setdefault(sha, f)
    return out


def verify_store(store: Store, repair: bool = False, copies: Callable[[], Mapping[str, Path]] = dict,
                 emit: Emit = quiet) -> VerifyResult:
    """Read back every layer, parse every manifest, and find the layers snapshots reference
    that are missing. With `repair`: a damaged or missing layer is uploaded again from a copy
    on this machine (`copies`), else a damaged one is removed (a snapshot of an app that has
    it stores it again); check records of layers that are gone are removed. Repairs wait for
    no snapshot to be in progress, like gc."""
    from .markers import Marker, describe, live_markers

    started = time.monotonic()
    res = VerifyResult(store.url)
    mark = Marker(store, "gc", {"name": "verify"}) if repair else None
    try:
        busy = live_markers(store, emit).get("snapshot", [])
        if repair and busy:
            raise StoreError(f"{store.url}: a snapshot is in progress ({', '.join(describe('snapshot', d) for _, d in busy)}); "
                             "nothing checked", hint="run `ravel store verify --repair` again when it has finished")
        referenced: dict[str, tuple[int, list[str]]] = {}
        for key in store.list(MANIFESTS):
            name = key[len(MANIFESTS):].removesuffix(".json")
            try:
                m = Manifest.from_json(store.get_bytes(key), f"{store.url}/{key}")
            except StoreError as exc:
                res.problems.append(f"snapshot {name}: {exc.message}")
                continue
            res.manifests += 1
            for layer in m.layers().values():
                referenced.setdefault(layer.sha256, (layer.size, []))[1].append(name)
        present = [k[len(LAYERS):] for k in store.list(LAYERS)]
        checks = check_layers(store, {sha: referenced.get(sha, (None, []))[0] for sha in present}, full=True)
        res.layers = len(checks)
        res.bytes_read = sum(c.read_bytes for c in checks.values())
        bad = {sha: c for sha, c in checks.items() if not c.ok}
        absent = {sha: v for sha, v in referenced.items() if sha not in checks}
        found = copies() if repair and (bad or absent) else {}
        for sha, c in sorted(bad.items()):
            users = _users(referenced, sha)
            if repair and sha in found and _mend(store, sha, found[sha], res, emit):
                continue
            if repair:
                store.delete(layer_key(sha))
                store.delete(check_record_key(sha))
                res.repaired.append(f"layer {sha[:12]}: removed (damaged: {c.why}; no copy here)")
                if users:
                    res.problems.append(f"layer {sha[:12]} is missing (removed: damaged){users}")
                continue
            res.problems.append(f"layer {sha[:12]} is damaged: {c.why}{users}")
        for sha in sorted(absent):
            if repair and sha in found and _mend(store, sha, found[sha], res, emit):
                continue
            res.problems.append(f"layer {sha[:12]} is missing{_users(referenced, sha)}")
        if repair:
            layers_now = {k[len(LAYERS):] for k in store.list(LAYERS)}
            for key in store.list(CHECKS):
                if key[len(CHECKS):].removesuffix(".json") not in layers_now:
                    store.delete(key)
    finally:
        if mark is not None:
            mark.release()
    res.seconds = time.monotonic() - started
    return res


def _users(referenced: Mapping[str, tuple[int, list[str]]], sha: str) -> str:
    names = sorted(referenced.get(sha, (0, []))[1])
    if not names:
        return ""
    more = f" and {len(names) - 3} more" if len(names) > 3 else ""
    return f": snapshot{'s' if len(names) > 1 else ''} {', '.join(names[:3])}{more} cannot be restored"


def _mend(store: Store, sha: str, src: Path, res: VerifyResult, emit: Emit) -> bool:
    try:
        upload_checked(store, sha, src, "the copy")
    except (StoreError, OSError) as exc:
        emit(Event("verify", f"layer {sha[:12]}: {getattr(exc, 'message', None) or exc}"))
        return False
    res.repaired.append(f"layer {sha[:12]}: uploaded again from {src}")
    return True


def checked_all(checks: Iterable[LayerCheck]) -> tuple[int, int]:
    """How many layers were read back, and how many bytes."""
    read = [c.read_bytes for c in checks if c.read_bytes]
    return len(read), sum(read)
