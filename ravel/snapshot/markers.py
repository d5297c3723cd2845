"""Markers in a store (``locks/<kind>-<id>.json``) that keep `gc` and snapshots in progress apart.

Mutual exclusion without server-side locks: a snapshot writes its marker and then looks for a
gc marker; gc writes its marker and then looks for snapshot markers. Whichever writes second
sees the other (the stores read their own writes), so a gc never deletes a layer that a
snapshot in progress is about to reference.

A marker names its owner (ravel/owners.py: pid, start time, host, boot). A run that dies
leaves its marker behind; the next command that looks at the markers removes it at once, and
says so, when its owner is gone: a process of this machine is checked by pid and start time;
another machine's marker is refreshed by its owner every HEARTBEAT_S and is dead when its
heartbeat is older than LEASE_S. Nothing waits for a fixed day to pass.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from typing import Any, Mapping

from .. import owners
from ..errors import StoreError
from ..events import Emit, Event, quiet
from ..store.base import Store

LOCKS = "locks/"
HEARTBEAT_S = 30.0
LEASE_S = 300.0  # ten missed heartbeats: the owner (on another machine) is gone


class Marker:
    """This process's marker of `kind` in `store`, kept fresh until `release`."""

    def __init__(self, store: Store, kind: str, what: Mapping[str, Any], heartbeat_s: float = HEARTBEAT_S) -> None:
        self.store = store
        self.key = f"{LOCKS}{kind}-{uuid.uuid4().hex[:12]}.json"
        now = time.time()
        self.doc = {"kind": kind, "time": now, "beat": now, **owners.me().doc(), **what}
        self._stop = threading.Event()
        store.put_bytes(self.key, json.dumps(self.doc).encode())
        self._thread = threading.Thread(target=self._beat, args=(heartbeat_s,), daemon=True,
                                        name=f"marker-{kind}")
        self._thread.start()

    def _beat(self, every: float) -> None:
        while not self._stop.wait(every):
            self.doc["beat"] = time.time()
            try:
                self.store.put_bytes(self.key, json.dumps(self.doc).encode())
            except StoreError:
                pass  # the next beat tries again; a lease is ten beats long

    def release(self) -> None:
        self._stop.set()
        self._thread.join(HEARTBEAT_S)
        self.store.delete(self.key)


def describe(kind: str, doc: Mapping[str, Any]) -> str:
    name = f" {doc['name']}" if doc.get("name") else ""
    host = f" on {doc['host']}" if doc.get("host") else ""
    return f"{kind}{name} (pid {doc.get('pid', '?')}{host})"


def live_markers(store: Store, emit: Emit = quiet) -> dict[str, list[tuple[str, dict[str, Any]]]]:
    """Every marker of a live owner, by kind. Markers whose owner is gone (and unreadable
    ones: a put is atomic on every store, so nobody is still writing them) are removed, each
    with an event saying whose it was and why it went."""
    out: dict[str, list[tuple[str, dict[str, Any]]]] = {}
    for key in store.list(LOCKS):
        kind = key[len(LOCKS):].split("-", 1)[0]
        try:
            doc = json.loads(store.get_bytes(key))
            if not isinstance(doc, dict):
                raise ValueError("not an object")
        except StoreError:
            continue  # released meanwhile
        except ValueError:
            why, doc = "it is unreadable", {}
        else:
            beat = owners.age(doc, "beat") if "beat" in doc else owners.age(doc, "time")
            why = owners.gone(doc, beat, LEASE_S)
        if why:
            store.delete(key)
            emit(Event("store", f"cleared the marker of a {describe(kind, doc)} in {store.url}: {why}"))
            continue
        out.setdefault(kind, []).append((key, doc))
    return out
