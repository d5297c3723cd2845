"""Frozen layers that live on hosts which do not share this machine's filesystem (SSH and cloud
hosts), brought here so the store can take them.

Only what the store lacks (or holds damaged) is fetched: each host reports every layer's
sha256, the store's copies are checked first (integrity.py), and an unchanged layer costs no
transfer. In parallel (several files of one host at once too),
each file checked against the hash its host reported (hashed as it arrives), into a temporary
directory under the cache (room checked first) that is removed whatever happens.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping

from ..diskspace import lacking
from ..errors import StoreError
from .layers import sha256_file
from ..transport.base import Streaming, Transport
from ..transport.copying import pump
from ..events import Emit, Event, quiet

PARALLEL_FETCHES = 4
TMP_PREFIX = "snapshot-fetch-"


@dataclass(frozen=True)
class HostFile:
    host: str
    path: str  # on the host
    size: int


@dataclass
class Brought:
    files: dict[str, Path]  # sha256 -> a file this machine can read, for the upload
    fetched: dict[str, HostFile] = field(default_factory=dict)  # what came over a transport

    @property
    def fetched_bytes(self) -> int:
        return sum(f.size for f in self.fetched.values())


def host_files(reports: Mapping[str, Mapping[str, Any]]) -> dict[str, HostFile]:
    """Pure: sha256 -> where the host that reported it keeps it, from `ravel-host snapshot`
    reports (each disk's chain, and the memory state)."""
    out: dict[str, HostFile] = {}
    for host, report in sorted(reports.items()):
        for info in report.get("vms", {}).values():
            for disk in info.get("disks", []):
                for img in disk["chain"]:
                    out.setdefault(img["sha256"], HostFile(host, img["path"], int(img["size"])))
            mem = info.get("memory")
            if mem:
                out.setdefault(mem["sha256"], HostFile(host, mem["path"], int(mem["size"])))
    return out


def fetch_hashed(t: Transport, remote: str, dest: Path) -> tuple[str, int]:
    """Copy a host's file here; its sha256 and size, hashed as the bytes arrive when the
    transport streams (no second pass over the copy)."""
    if not isinstance(t, Streaming):
        t.get(remote, dest)
        return sha256_file(dest)
    with t.reading(remote) as blocks, open(dest, "wb") as out:
        d = pump(blocks, out)
    return d.sha256, d.size


def clear_stale(cache: Path) -> None:
    """Remove fetch directories of runs that died (their pid is in the name and is gone)."""
    for d in cache.glob(f"{TMP_PREFIX}*"):
        try:
            pid = int(d.name[len(TMP_PREFIX):].split("-", 1)[0])
        except ValueError:
            continue
        if pid != os.getpid() and not Path(f"/proc/{pid}").exists():
            shutil.rmtree(d, ignore_errors=True)


@contextlib.contextmanager
def brought_here(files: Mapping[str, Path], reports: Mapping[str, Mapping[str, Any]],
                 transports: Mapping[str, Transport], cache: Path,
                 emit: Emit = quiet, parallel: int = PARALLEL_FETCHES) -> Iterator[Brought]:
    """`files` (sha256 -> path as its host names it: the layers the store needs) with every
    layer that sits on a non-local host replaced by a verified local copy; the copies are
    removed when the block ends."""
    where = host_files(reports)
    wanted = {sha: where[sha] for sha in sorted(files)
              if sha in where and not transports[where[sha].host].is_local}
    here = {sha: Path(p) for sha, p in files.items() if sha not in wanted}
    if not wanted:
        yield Brought(here)
        return
    cache.mkdir(parents=True, exist_ok=True, mode=0o700)
    clear_stale(cache)
    short = lacking(cache, sum(f.size for f in wanted.values()))
    if short:
        raise StoreError(short, hint="layers new to the store pass through this cache on their way from the "
                                     "hosts; make room there and snapshot again")
    tmp = Path(tempfile.mkdtemp(dir=cache, prefix=f"{TMP_PREFIX}{os.getpid()}-"))
    try:
        def one(item: tuple[str, HostFile]) -> tuple[str, Path]:
            sha, f = item
            dest = tmp / sha
            got, size = fetch_hashed(transports[f.host], f.path, dest)
            if got != sha or size != f.size:
                raise StoreError(f"{f.host}: layer {f.path} arrived with sha256 {got[:12]} ({size} bytes), "
                                 f"but the host reported {sha[:12]} ({f.size} bytes)",
                                 hint="nothing was stored for this snapshot; take it again")
            emit(Event("fetch", f"{f.host}: layer {sha[:12]} ({size / 2**20:.1f} MiB)", host=f.host))
            return sha, dest

        with ThreadPoolExecutor(max_workers=max(1, min(parallel, len(wanted)))) as pool:
            fetched = dict(pool.map(one, wanted.items()))
        emit(Event("fetch", f"{len(wanted)} layers, {sum(f.size for f in wanted.values()) / 2**20:.1f} MiB "
                            f"from {len({f.host for f in wanted.values()})} hosts", done=True))
        yield Brought({**here, **fetched}, wanted)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
