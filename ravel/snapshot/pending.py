"""A snapshot in progress in a store: its marker keeps gc away; the layers it will reference
are checked (integrity.py) before anything is uploaded; what is missing or damaged is uploaded
(room checked first); the manifest is written last, once every layer it names is there."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Mapping

from ..diskspace import shortfall
from ..errors import StoreError
from ..events import Emit, Event, quiet
from ..store.base import Store
from .integrity import LayerCheck, check_layers, record_put, upload_checked
from .layers import Manifest, check_name, layer_key, manifest_key
from .markers import Marker, live_markers

PARALLEL_UPLOADS = 4


class Pending:
    """A snapshot in progress: its marker keeps gc away until `commit` or `abort`."""

    def __init__(self, store: Store, name: str, emit: Emit = quiet) -> None:
        self.store = store
        self.name = check_name(name)
        self.emit = emit
        self.marker = Marker(store, "snapshot", {"name": name})
        try:
            gcs = live_markers(store, emit).get("gc", [])
        except BaseException:
            self.marker.release()
            raise
        if gcs:
            self.marker.release()
            doc = gcs[0][1]
            what = "a store repair (`ravel store verify --repair`)" if doc.get("name") == "verify" else "a garbage collection"
            raise StoreError(f"{store.url}: {what} is running (pid {doc.get('pid')}"
                             + (f" on {doc['host']})" if doc.get("host") else ")"),
                             hint="snapshot again when it has finished")

    @property
    def key(self) -> str:
        return self.marker.key

    def check(self, sizes: Mapping[str, int]) -> dict[str, LayerCheck]:
        """Check every layer the snapshot will reference (sha256 -> size) that the store
        holds: missing, damaged or ok."""
        return check_layers(self.store, sizes)

    def upload(self, files: Mapping[str, Path], damaged: Mapping[str, LayerCheck] | None = None,
               parallel: int = PARALLEL_UPLOADS, progress: Callable[[str, int, bool], None] | None = None) -> int:
        """Upload these layers (sha256 -> local file): the ones the store lacks, and the
        damaged ones (`damaged`), each of those only once its file is known to hash to its
        name. Returns the bytes sent. Refused at once when the store has no room for them."""
        damaged = damaged or {}
        items = sorted(files.items())
        if not items:
            return 0
        sizes = {sha: os.path.getsize(p) for sha, p in items}
        space = self.store.free_space()
        need = sum(sizes.values())
        if space is not None and need > space.free:
            raise StoreError(shortfall(space.where, need, space.free),
                             hint="nothing was stored; make room (`ravel store gc` removes layers no snapshot "
                                  "uses) or snapshot into another --store")

        def one(item: tuple[str, Path]) -> int:
            sha, path = item
            if sha in damaged:
                try:
                    upload_checked(self.store, sha, path, "this app's copy")
                except StoreError as exc:
                    raise StoreError(f"{self.store.url}: layer {sha[:12]} is damaged ({damaged[sha].why}), and "
                                     f"{exc.message}", hint="the snapshot was not taken; `ravel store verify` lists "
                                     "the snapshots that cannot be restored") from None
                self.emit(Event("store", f"layer {sha[:12]} was damaged in {self.store.url} ({damaged[sha].why}): "
                                         f"uploaded again from this app's copy"))
            else:
                self.store.put(layer_key(sha), path)
                record_put(self.store, sha)
            if progress:
                progress(sha, sizes[sha], True)
            return sizes[sha]

        with ThreadPoolExecutor(max_workers=max(1, min(parallel, len(items)))) as pool:
            return sum(pool.map(one, items))

    def commit(self, manifest: Manifest) -> int:
        """Write the manifest once every layer it names is in the store; returns its size."""
        for sha in manifest.layers():
            if not self.store.exists(layer_key(sha)):
                raise StoreError(f"{self.store.url}: layer {sha[:12]} vanished during the snapshot")
        data = manifest.to_json()
        self.store.put_bytes(manifest_key(self.name), data)
        self.marker.release()
        return len(data)

    def abort(self) -> None:
        self.marker.release()
