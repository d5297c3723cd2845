"""Where ravel keeps things on this machine. `RAVEL_HOME` puts all of it under one directory."""

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
