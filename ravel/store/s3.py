"""A store in an S3 bucket (boto3): large blobs go up and down in parallel multipart transfers.

The endpoint is the SDK's own business: `AWS_ENDPOINT_URL` (or a profile) points boto3 at an
S3-compatible server, such as moto's in the tests.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterator

from ..errors import StoreError
from .base import PARALLEL_PARTS, PART_SIZE, WEEK_S, BlobInfo, Hashing, Space, check_key, missing


class S3Store:
    # reading a layer back is a download (and egress, from outside AWS): between weekly full
    # checks a layer is trusted while its ETag and modification time are the ones last checked
    reread_every_s = WEEK_S

    def __init__(self, bucket: str, prefix: str = "", client: Any = None) -> None:
        import boto3
        from boto3.s3.transfer import TransferConfig
        from botocore.config import Config

        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.url = f"s3://{bucket}/{self.prefix}".rstrip("/")
        region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
        self.client = client or boto3.client(
            "s3", region_name=region, config=Config(retries={"max_attempts": 5, "mode": "standard"},
                                                    max_pool_connections=PARALLEL_PARTS * 2))
        self.transfer = TransferConfig(multipart_threshold=PART_SIZE, multipart_chunksize=PART_SIZE,
                                       max_concurrency=PARALLEL_PARTS, use_threads=True)

    def _key(self, key: str) -> str:
        check_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def _fail(self, what: str, key: str, exc: Exception) -> StoreError:
        return StoreError(f"{self.url}: cannot {what} {key}: {_reason(exc)}",
                          hint="check the bucket, its permissions and AWS_ENDPOINT_URL/credentials")

    def put(self, key: str, src: Path) -> None:
        try:
            self.client.upload_file(str(src), self.bucket, self._key(key), Config=self.transfer)
        except Exception as exc:  # boto3 raises many unrelated types; each becomes one line
            raise self._fail("upload", key, exc) from None

    def put_bytes(self, key: str, data: bytes) -> None:
        try:
            self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data)
        except Exception as exc:
            raise self._fail("upload", key, exc) from None

    def get(self, key: str, dest: Path) -> None:
        try:
            self.client.download_file(self.bucket, self._key(key), str(dest), Config=self.transfer)
        except Exception as exc:
            if _not_found(exc):
                raise missing(self.url, key) from None
            raise self._fail("download", key, exc) from None

    def get_bytes(self, key: str) -> bytes:
        try:
            return self.client.get_object(Bucket=self.bucket, Key=self._key(key))["Body"].read()
        except Exception as exc:
            if _not_found(exc):
                raise missing(self.url, key) from None
            raise self._fail("download", key, exc) from None

    def size(self, key: str) -> int | None:
        info = self.stat(key)  # the same one lookup
        return None if info is None else info.size

    def stat(self, key: str) -> BlobInfo | None:
        try:
            head = self.client.head_object(Bucket=self.bucket, Key=self._key(key))
        except Exception as exc:
            if _not_found(exc):
                return None
            raise self._fail("look up", key, exc) from None
        stamp = f"{head.get('ETag', '')}@{head.get('LastModified', '')}@{head.get('VersionId', '')}"
        return BlobInfo(int(head["ContentLength"]), stamp)

    def digest(self, key: str) -> tuple[str, int]:
        sink = Hashing()  # s3transfer writes a non-seekable sink in order, parts still in parallel
        try:
            self.client.download_fileobj(self.bucket, self._key(key), sink, Config=self.transfer)
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
            self.client.delete_object(Bucket=self.bucket, Key=self._key(key))
        except Exception as exc:
            if not _not_found(exc):
                raise self._fail("delete", key, exc) from None

    def list(self, prefix: str = "") -> Iterator[str]:
        base = f"{self.prefix}/" if self.prefix else ""
        keys = []
        try:
            pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=base + prefix)
            for page in pages:
                keys += [o["Key"][len(base):] for o in page.get("Contents", [])]
        except Exception as exc:
            raise self._fail("list", prefix or "/", exc) from None
        return iter(sorted(keys))


def _not_found(exc: Exception) -> bool:
    code = str(getattr(exc, "response", {}).get("Error", {}).get("Code", ""))
    return code in ("404", "NoSuchKey", "NotFound")


def _reason(exc: Exception) -> str:
    err = getattr(exc, "response", {}).get("Error", {})
    if err:
        return f"{err.get('Code', '')} {err.get('Message', '')}".strip()
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__
