"""Removing the layers no snapshot references (`ravel store gc`)."""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..errors import StoreError
from ..events import Emit, quiet
from ..store.base import Store
from .integrity import check_record_key
from .layers import LAYERS, MANIFESTS, Manifest, layer_key
from .markers import Marker, describe, live_markers

_SHA_BYTES = re.compile(rb"[0-9a-f]{64}")


@dataclass(frozen=True)
class GcResult:
    removed: tuple[str, ...]
    freed_bytes: int
    kept: int
    unreadable: tuple[str, ...] = ()  # manifests that do not parse (their layers were kept)


def gc(store: Store, dry_run: bool = False, emit: Emit = quiet) -> GcResult:
    """Remove every layer no manifest references. Refuses while a snapshot is in progress. A
    manifest that cannot be read is reported, and every layer its bytes still name is kept:
    what it referenced cannot be known for sure, and a layer removed cannot come back."""
    mark = Marker(store, "gc", {})
    try:
        busy = live_markers(store, emit).get("snapshot", [])
        if busy:
            names = ", ".join(sorted(describe("snapshot", d) for _, d in busy))
            raise StoreError(f"{store.url}: a snapshot is in progress ({names}); nothing removed",
                             hint="run `ravel store gc` again when it has finished")
        layers = [k[len(LAYERS):] for k in store.list(LAYERS)]  # listed before the manifests
        referenced: set[str] = set()
        unreadable = []
        for key in store.list(MANIFESTS):
            try:
                data = store.get_bytes(key)
            except StoreError:
                continue  # removed meanwhile
            try:
                referenced |= set(Manifest.from_json(data, f"{store.url}/{key}").layers())
            except StoreError as exc:
                referenced |= {m.decode() for m in _SHA_BYTES.findall(data)}
                unreadable.append(exc.message)
        removed, freed = [], 0
        for sha in layers:
            if sha in referenced:
                continue
            freed += store.size(layer_key(sha)) or 0
            if not dry_run:
                store.delete(layer_key(sha))
                store.delete(check_record_key(sha))
            removed.append(sha)
        return GcResult(tuple(removed), freed, len(layers) - len(removed), tuple(unreadable))
    finally:
        mark.release()
