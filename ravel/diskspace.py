"""Free space on this machine's filesystems, and how a shortfall is said.

Whatever ravel writes in bulk (layers into a local store, layers fetched for a restore or
from hosts) has a size known before the first byte: the room is checked first, so a full
disk is one clear line before anything is written, not a half-written file and an errno
from deep inside a copy.
"""

from __future__ import annotations

import os
from pathlib import Path


def free_bytes(path: str | os.PathLike[str]) -> int:
    """Bytes an unprivileged write may still use on the filesystem that holds `path` (or
    would hold it: the nearest directory above it that exists)."""
    p = Path(path).absolute()
    while not p.exists() and p.parent != p:
        p = p.parent
    st = os.statvfs(p)
    return st.f_bavail * st.f_frsize


def size_text(n: int) -> str:
    if n >= 10 << 30:
        return f"{n / 2**30:.1f} GiB"
    return f"{n / 2**20:.1f} MiB"


def shortfall(where: str | os.PathLike[str], need: int, have: int) -> str:
    return f"no space left on {where}: need {size_text(need)}, have {size_text(have)}"


def lacking(path: str | os.PathLike[str], need: int) -> str | None:
    """The shortfall message when `need` bytes do not fit under `path`, else None."""
    have = free_bytes(path)
    return shortfall(path, need, have) if need > have else None
