"""The image store's one interface: blobs by key, on a local directory, S3 or GCS.

Keys are relative, slash-separated names (``layers/<sha256>``, ``manifests/<name>.json``).
Every backend passes the same contract suite (tests/contract/test_store.py).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Protocol

from ..errors import StoreError

_KEY = re.compile(r"^[A-Za-z0-9._@=+-]+(/[A-Za-z0-9._@=+-]+)*$")

# large files go up and down in parts, in parallel, where the backend has it
PART_SIZE = 16 * 1024 * 1024
PARALLEL_PARTS = 8
WEEK_S = 7 * 24 * 3600.0


@dataclass(frozen=True)
class BlobInfo:
    size: int
    # differs whenever the bytes under the key may have changed: replaced by a put (every
    # store), or written in place (a local file: its ctime moves)
    stamp: str


@dataclass(frozen=True)
class Space:
    where: str  # the directory that fills up
    free: int  # bytes an unprivileged write can still use


class Store(Protocol):
    url: str  # how a user names this store: file:///dir, s3://bucket/prefix, gs://bucket/prefix
    # How long a layer already in the store is trusted without reading it back whole and
    # hashing it again, while its stamp is the one seen at that full check: 0 (every time) where
    # reading back is cheap (a local disk); object stores read back over the network, at the
    # price of a download (see docs/snapshots.md, "Integrity", for the figures)
    reread_every_s: float

    def put(self, key: str, src: Path) -> None:
        """Upload a local file under `key` (replacing any blob there); atomic for readers."""

    def put_bytes(self, key: str, data: bytes) -> None: ...

    def get(self, key: str, dest: Path) -> None:
        """Download `key` into the local file `dest`; StoreError naming the key if it is missing."""

    def get_bytes(self, key: str) -> bytes: ...

    def exists(self, key: str) -> bool: ...

    def size(self, key: str) -> int | None:
        """Bytes stored under `key`, or None when there is no such blob."""

    def stat(self, key: str) -> BlobInfo | None:
        """Size and stamp of the blob under `key`, or None when there is no such blob."""

    def digest(self, key: str) -> tuple[str, int]:
        """sha256 (hex) and size of the bytes stored under `key`, read back in full (nothing is
        kept on this machine); StoreError naming the key if it is missing."""

    def free_space(self) -> Space | None:
        """Room left for puts, where the store can tell (a local directory); None for object
        stores, which do not fill up."""

    def delete(self, key: str) -> None:
        """Remove `key`; nothing happens when it is already gone."""

    def list(self, prefix: str = "") -> Iterator[str]:
        """Keys starting with `prefix`, sorted."""


def check_key(key: str) -> str:
    if not _KEY.match(key) or any(part in (".", "..") for part in key.split("/")):
        raise StoreError(f"invalid store key {key!r}")
    return key


def missing(url: str, key: str) -> StoreError:
    return StoreError(f"{url}: no blob {key!r}", hint="the store does not hold it: was it removed by hand?")


class Hashing:
    """A write-only file object that hashes what is written to it, in order (a download's
    sink when only the digest is wanted)."""

    def __init__(self) -> None:
        self.h = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        self.h.update(data)
        self.size += len(data)
        return len(data)

    def flush(self) -> None:
        pass

    def result(self) -> tuple[str, int]:
        return self.h.hexdigest(), self.size
