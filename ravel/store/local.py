"""A store in a local directory (the default: <data>/store). A put is a write to a temporary
file and a rename, so a reader never sees half a blob and an interrupted put leaves no blob."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

from ..errors import StoreError
from .base import check_key, missing


class LocalStore:
    def __init__(self, root: Path) -> None:
        self.root = Path(root).absolute()
        self.url = f"file://{self.root}"

    def _path(self, key: str) -> Path:
        return self.root / check_key(key)

    def _write(self, key: str, fill) -> None:
        dest = self._path(key)
        try:
            dest.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=".put-")
        except OSError as exc:
            raise StoreError(f"{self.url}: cannot write {key}: {exc.strerror or exc}") from None
        try:
            with os.fdopen(fd, "wb") as fh:
                fill(fh)
                fh.flush()
                os.fsync(fh.fileno())
            os.chmod(tmp, 0o644)
            os.replace(tmp, dest)
        except OSError as exc:
            raise StoreError(f"{self.url}: cannot write {key}: {exc.strerror or exc}") from None
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)

    def put(self, key: str, src: Path) -> None:
        def fill(fh) -> None:
            with open(src, "rb") as s:
                shutil.copyfileobj(s, fh, 4 << 20)

        self._write(key, fill)

    def put_bytes(self, key: str, data: bytes) -> None:
        self._write(key, lambda fh: fh.write(data))

    def get(self, key: str, dest: Path) -> None:
        path = self._path(key)
        try:
            shutil.copyfile(path, dest)  # copy_file_range/sendfile: no trip through Python
        except FileNotFoundError:
            if not path.exists():
                raise missing(self.url, key) from None
            raise

    def get_bytes(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError:
            raise missing(self.url, key) from None

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def size(self, key: str) -> int | None:
        try:
            return self._path(key).stat().st_size
        except FileNotFoundError:
            return None

    def delete(self, key: str) -> None:
        try:
            self._path(key).unlink()
        except FileNotFoundError:
            pass

    def list(self, prefix: str = "") -> Iterator[str]:
        if not self.root.is_dir():
            return iter(())
        keys = []
        for dirpath, _, files in os.walk(self.root):
            rel = os.path.relpath(dirpath, self.root)
            for f in files:
                if f.startswith(".put-"):
                    continue
                key = f if rel == "." else f"{rel}/{f}"
                if key.startswith(prefix):
                    keys.append(key)
        return iter(sorted(keys))

    def local_path(self, key: str) -> Path:
        """Where a blob lives on this machine (a local store only)."""
        return self._path(key)
