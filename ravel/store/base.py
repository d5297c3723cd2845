"""The image store's one interface: blobs by key, on a local directory, S3 or GCS.

Keys are relative, slash-separated names (``layers/<sha256>``, ``manifests/<name>.json``).
Every backend passes the same contract suite (tests/contract/test_store.py).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Iterator, Protocol

from ..errors import StoreError

_KEY = re.compile(r"^[A-Za-z0-9._@=+-]+(/[A-Za-z0-9._@=+-]+)*$")

# large files go up and down in parts, in parallel, where the backend has it
PART_SIZE = 16 * 1024 * 1024
PARALLEL_PARTS = 8


class Store(Protocol):
    url: str  # how a user names this store: file:///dir, s3://bucket/prefix, gs://bucket/prefix

    def put(self, key: str, src: Path) -> None:
        """Upload a local file under `key` (replacing any blob there); atomic for readers."""

    def put_bytes(self, key: str, data: bytes) -> None: ...

    def get(self, key: str, dest: Path) -> None:
        """Download `key` into the local file `dest`; StoreError naming the key if it is missing."""

    def get_bytes(self, key: str) -> bytes: ...

    def exists(self, key: str) -> bool: ...

    def size(self, key: str) -> int | None:
        """Bytes stored under `key`, or None when there is no such blob."""

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
