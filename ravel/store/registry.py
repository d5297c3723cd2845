"""Stores by URL: `file:///dir` (or a plain path), `s3://bucket/prefix`, `gs://bucket/prefix`;
none (or `local`) is the default local store in the data directory. Backends load lazily, so
the cloud SDKs are only imported when their store is used."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlparse

from ..errors import StoreError
from ..paths import Paths
from .base import Store

SCHEMES = ("file", "s3", "gs")


def default_store_dir(paths: Paths) -> Path:
    return paths.data / "store"


def open_store(url: str | None, paths: Paths) -> Store:
    if not url or url == "local":
        from .local import LocalStore

        return LocalStore(default_store_dir(paths))
    parsed = urlparse(url)
    if parsed.scheme in ("", "file"):
        from .local import LocalStore

        if parsed.scheme == "file" and parsed.netloc not in ("", "localhost"):
            raise StoreError(f"store URL {url!r}: a file URL names a local directory, as file:///path")
        path = parsed.path if parsed.scheme == "file" else url
        return LocalStore(Path(path).expanduser())
    if parsed.scheme in ("s3", "gs"):
        if not parsed.netloc:
            raise StoreError(f"store URL {url!r} has no bucket; use {parsed.scheme}://BUCKET/PREFIX")
        if parsed.scheme == "s3":
            from .s3 import S3Store

            return S3Store(parsed.netloc, parsed.path)
        from .gcs import GCSStore

        return GCSStore(parsed.netloc, parsed.path)
    raise StoreError(f"store URL {url!r}: unknown scheme {parsed.scheme!r}; use one of "
                     + ", ".join(f"{s}://" for s in SCHEMES))
