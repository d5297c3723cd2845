"""Where ravel keeps things on this machine. `RAVEL_HOME` puts all of it under one directory.

What ravel keeps under its state and data directories (the state database, guest disks, layers,
snapshots, keys) is for the user running it only: directories 0700, files 0600.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Paths:
    state: Path  # SQLite state and locks
    data: Path  # VM disks, snapshots store
    cache: Path  # host runtime bundle, downloaded images
    run: Path  # sockets, pid files, console logs: short, because UNIX socket paths are < 108 bytes

    @property
    def tag(self) -> str:
        """Short stable id of this set-up, so two RAVEL_HOMEs never share namespaces or devices."""
        return hashlib.sha256(str(self.state).encode()).hexdigest()[:6]

    def app_data(self, app: str) -> Path:
        return self.data / "apps" / app

    def app_run(self, app: str) -> Path:
        return self.run / app


PRIVATE_DIR = 0o700
PRIVATE_FILE = 0o600


def private_dir(path: Path) -> Path:
    """`path` and every missing directory above it, made 0700 (mkdir's mode passes through
    the umask, so each is set again); `path` itself is made private if it was not."""
    missing = []
    p = Path(path)
    while not p.is_dir() and p.parent != p:
        missing.append(p)
        p = p.parent
    for d in reversed(missing):
        try:
            d.mkdir(mode=PRIVATE_DIR)
        except FileExistsError:
            pass
        os.chmod(d, PRIVATE_DIR)
    if os.stat(path).st_mode & 0o077:
        os.chmod(path, PRIVATE_DIR)
    return Path(path)


def write_private(path: Path, data: str | bytes) -> None:
    """Replace `path` with `data`, 0600, atomically (a reader sees the old file or the new)."""
    private_dir(path.parent)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, PRIVATE_FILE)
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
        os.chmod(tmp, PRIVATE_FILE)  # an old temporary file keeps its mode through O_CREAT
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def paths(env: dict[str, str] | None = None) -> Paths:
    env = dict(os.environ) if env is None else env
    home = env.get("RAVEL_HOME")
    if home:
        root = Path(home).expanduser().absolute()
        state, data, cache = root / "state", root / "data", root / "cache"
    else:
        user = Path.home()
        state = Path(env.get("XDG_STATE_HOME") or user / ".local/state") / "ravel"
        data = Path(env.get("XDG_DATA_HOME") or user / ".local/share") / "ravel"
        cache = Path(env.get("XDG_CACHE_HOME") or user / ".cache") / "ravel"
    tag = hashlib.sha256(str(state).encode()).hexdigest()[:6]
    return Paths(state, data, cache, Path("/run/ravel") / tag)
