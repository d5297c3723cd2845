"""A store in a local directory (the default: <data>/store). A put is a write to a temporary
file and a rename, so a reader never sees half a blob and an interrupted put leaves no blob.

Blobs are guest disk contents: the directories are 0700 and the files 0600, like the keys.
A temporary file carries its writer's pid and start time in its name, so one left by a run
that was killed is removed by the next put into that directory.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

from .. import owners
from ..diskspace import free_bytes
from ..paths import private_dir
from ..errors import StoreError
from .base import BlobInfo, Space, check_key, missing

TMP_PREFIX = ".put-"
DIR_MODE = 0o700
FILE_MODE = 0o600
HASH_CHUNK = 4 << 20


def _short(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:8]


class LocalStore:
    reread_every_s = 0.0  # hashing a local file runs at ~1.6 GB/s here: every layer, every time

    def __init__(self, root: Path) -> None:
        self.root = Path(root).absolute()
        self.url = f"file://{self.root}"
        self._swept: set[Path] = set()

    def _path(self, key: str) -> Path:
        return self.root / check_key(key)

    def _make_dirs(self, d: Path) -> None:
        private_dir(d)
        if self.root.stat().st_mode & 0o077:  # an older ravel left it readable to others
            os.chmod(self.root, DIR_MODE)

    def _sweep(self, d: Path) -> None:
        """Remove temporary files of puts whose process is gone (killed mid-put). A name says
        which machine and boot wrote it: another machine's (a shared directory) is left alone."""
        if d in self._swept:
            return
        self._swept.add(d)
        me = owners.me()
        try:
            names = [e.name for e in os.scandir(d) if e.name.startswith(TMP_PREFIX)]
        except OSError:
            return
        for name in names:
            try:
                pid, start, host, boot = name[len(TMP_PREFIX):].split("-")[:4]
            except ValueError:
                continue  # an older ravel's name: nothing tells whether it is still being written
            if host != _short(me.host):
                continue
            if boot == _short(me.boot) and owners.start_ticks(int(pid)) == int(start):
                continue  # its writer runs
            try:
                os.unlink(d / name)
            except FileNotFoundError:
                pass

    def _write(self, key: str, fill) -> None:
        dest = self._path(key)
        me = owners.me()
        try:
            self._make_dirs(dest.parent)
            self._sweep(dest.parent)
            fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f"{TMP_PREFIX}{me.pid}-{me.start}-"
                                                            f"{_short(me.host)}-{_short(me.boot)}-")
        except OSError as exc:
            raise StoreError(f"{self.url}: cannot write {key}: {exc.strerror or exc}") from None
        try:
            with os.fdopen(fd, "wb") as fh:
                fill(fh)
                fh.flush()
                os.fsync(fh.fileno())
            os.chmod(tmp, FILE_MODE)
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

    def stat(self, key: str) -> BlobInfo | None:
        try:
            st = self._path(key).stat()
        except FileNotFoundError:
            return None
        return BlobInfo(st.st_size, f"{st.st_size}:{st.st_mtime_ns}:{st.st_ctime_ns}:{st.st_ino}")

    def digest(self, key: str) -> tuple[str, int]:
        h = hashlib.sha256()
        size = 0
        try:
            with open(self._path(key), "rb") as f:
                while chunk := f.read(HASH_CHUNK):
                    h.update(chunk)
                    size += len(chunk)
        except FileNotFoundError:
            raise missing(self.url, key) from None
        except OSError as exc:  # a damaged disk may fail the read itself
            raise StoreError(f"{self.url}: cannot read {key}: {exc.strerror or exc}") from None
        return h.hexdigest(), size

    def free_space(self) -> Space | None:
        return Space(str(self.root), free_bytes(self.root))

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
                if f.startswith(TMP_PREFIX):
                    continue
                key = f if rel == "." else f"{rel}/{f}"
                if key.startswith(prefix):
                    keys.append(key)
        return iter(sorted(keys))

    def local_path(self, key: str) -> Path:
        """Where a blob lives on this machine (a local store only)."""
        return self._path(key)
