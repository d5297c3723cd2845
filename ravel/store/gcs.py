"""A store in a Google Cloud Storage bucket (google-cloud-storage).

Large blobs go up in parallel parts (the XML multipart API, through the library's
transfer_manager) and down in parallel ranged reads; where a server lacks multipart (some
emulators) a resumable upload is used instead. The endpoint is the client's own business:
`STORAGE_EMULATOR_HOST` points it at an emulator, as in the tests.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterator

from ..errors import StoreError
from .base import PARALLEL_PARTS, PART_SIZE, WEEK_S, BlobInfo, Hashing, Space, check_key, missing


class GCSStore:
    # reading a layer back is a download: between weekly full checks a layer is trusted while
    # its generation (a new one for every write of the object) is the one last checked
    reread_every_s = WEEK_S

    def __init__(self, bucket: str, prefix: str = "", client: Any = None) -> None:
        from google.cloud import storage

        self.prefix = prefix.strip("/")
        self.url = f"gs://{bucket}/{self.prefix}".rstrip("/")
        if client is None:
            emulator = os.environ.get("STORAGE_EMULATOR_HOST")
            if emulator:
                from google.auth.credentials import AnonymousCredentials

                client = storage.Client(project=os.environ.get("GOOGLE_CLOUD_PROJECT", "ravel"),
                                        credentials=AnonymousCredentials())
            else:
                client = storage.Client()
        self.client = client
        self.bucket = client.bucket(bucket)
        self._multipart = not os.environ.get("STORAGE_EMULATOR_HOST")

    def _blob(self, key: str) -> Any:
        check_key(key)
        return self.bucket.blob(f"{self.prefix}/{key}" if self.prefix else key)

    def _fail(self, what: str, key: str, exc: Exception) -> StoreError:
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        return StoreError(f"{self.url}: cannot {what} {key}: {msg}",
                          hint="check the bucket, its permissions and your Google credentials")

    def put(self, key: str, src: Path) -> None:
        blob = self._blob(key)
        try:
            if self._multipart and os.path.getsize(src) > PART_SIZE:
                from google.cloud.storage import transfer_manager

                transfer_manager.upload_chunks_concurrently(str(src), blob, chunk_size=PART_SIZE,
                                                            max_workers=PARALLEL_PARTS)
            else:
                blob.chunk_size = PART_SIZE  # resumable upload in parts
                blob.upload_from_filename(str(src))
        except Exception as exc:
            raise self._fail("upload", key, exc) from None

    def put_bytes(self, key: str, data: bytes) -> None:
        try:
            self._blob(key).upload_from_string(data)
        except Exception as exc:
            raise self._fail("upload", key, exc) from None

    def get(self, key: str, dest: Path) -> None:
        blob = self._blob(key)
        try:
            size = self.size(key)
            if size is None:
                raise missing(self.url, key)
            if size > PART_SIZE:
                from google.cloud.storage import transfer_manager

                transfer_manager.download_chunks_concurrently(blob, str(dest), chunk_size=PART_SIZE,
                                                              max_workers=PARALLEL_PARTS)
            else:
                blob.download_to_filename(str(dest))
        except StoreError:
            raise
        except Exception as exc:
            if _not_found(exc):
                raise missing(self.url, key) from None
            raise self._fail("download", key, exc) from None

    def get_bytes(self, key: str) -> bytes:
        try:
            return self._blob(key).download_as_bytes()
        except Exception as exc:
            if _not_found(exc):
                raise missing(self.url, key) from None
            raise self._fail("download", key, exc) from None

    def size(self, key: str) -> int | None:
        info = self.stat(key)  # the same one lookup
        return None if info is None else info.size

    def stat(self, key: str) -> BlobInfo | None:
        try:
            blob = self.bucket.get_blob(self._blob(key).name)
        except Exception as exc:
            if _not_found(exc):
                return None
            raise self._fail("look up", key, exc) from None
        if blob is None:
            return None
        return BlobInfo(int(blob.size or 0), f"{blob.generation}@{blob.crc32c or ''}")

    def digest(self, key: str) -> tuple[str, int]:
        sink = Hashing()
        try:
            self._blob(key).download_to_file(sink)
        except Exception as exc:
            if _not_found(exc):
                raise missing(self.url, key) from None
            raise self._fail("read back", key, exc) from None
        return sink.result()

    def free_space(self) -> Space | None:
        return None

    def exists(self, key: str) -> bool:
        return self.size(key) is not None

    def delete(self, key: str) -> None:
        try:
            self._blob(key).delete()
        except Exception as exc:
            if not _not_found(exc):
                raise self._fail("delete", key, exc) from None

    def list(self, prefix: str = "") -> Iterator[str]:
        base = f"{self.prefix}/" if self.prefix else ""
        try:
            keys = [b.name[len(base):] for b in self.client.list_blobs(self.bucket, prefix=base + prefix)]
        except Exception as exc:
            raise self._fail("list", prefix or "/", exc) from None
        return iter(sorted(keys))


def _not_found(exc: Exception) -> bool:
    return type(exc).__name__ == "NotFound" or getattr(exc, "code", None) == 404
