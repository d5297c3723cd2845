"""The last good state of each app, kept beside the database: `state/backups/APP.json` (0600),
written atomically after every command that changed the app and succeeded, removed when the
app is destroyed.

A database that is damaged, emptied or replaced loses apps that still have hosts and VMs; their
backups say which (`check_not_lost`, run whenever a command opens the state) and are what `ravel
doctor --repair-state` rebuilds from (repair.py). Order matters for that check to mean loss: a
backup is written only after its app's rows are committed, and removed before they are.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ..errors import StateDamaged
from ..state import REPAIR_HINT, State

DIR = "backups"
SUFFIX = ".json"


def directory(state: State) -> Path:
    return state.dir / DIR


def path(state: State, app: str) -> Path:
    return directory(state) / f"{app}{SUFFIX}"


def save(state: State, app: str) -> None:
    """Back app `app` up as the state holds it now (nothing when it is unknown). A state that
    fails its quick check is not copied over the last good backup: that is an error."""
    problems = quick_check(state)
    if problems:
        raise StateDamaged(f"the state database {state.path} is damaged: {problems[0]}", hint=REPAIR_HINT)
    doc = state.export_app(app)
    if doc is None:
        return
    d = directory(state)
    d.mkdir(mode=0o700, exist_ok=True)
    _write_atomic(path(state, app), json.dumps(doc, indent=1, sort_keys=True).encode() + b"\n")


def remove(state: State, app: str) -> None:
    try:
        path(state, app).unlink()
    except FileNotFoundError:
        pass


def load(state: State, app: str) -> dict[str, Any] | None:
    """App `app`'s backup, or None when there is none or it does not parse."""
    try:
        doc = json.loads(path(state, app).read_text())
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def backed_up(state: State) -> list[str]:
    """The apps that have a backup, by name."""
    try:
        names = os.listdir(directory(state))
    except FileNotFoundError:
        return []
    return sorted(n[: -len(SUFFIX)] for n in names if n.endswith(SUFFIX) and not n.startswith("."))


def check_not_lost(state: State) -> None:
    """Refuse to work on a state that lost apps its backups hold (emptied, truncated to zero
    bytes, replaced): the next publish would take their namespaces over without a word."""
    backups = backed_up(state)
    if not backups:
        return
    size = state.path.stat().st_size if state.path.exists() else None  # before SQLite writes to it
    known = {a.name for a in state.apps()}
    lost = [a for a in backups if a not in known]
    if not lost:
        return
    how = "is empty (0 bytes)" if size == 0 else "is missing" if size is None else "was replaced or emptied"
    raise StateDamaged(f"the state database {state.path} {how}: it does not know app"
                       f"{'s' if len(lost) > 1 else ''} {', '.join(lost)}, which {'have' if len(lost) > 1 else 'has'} "
                       f"a backup in {directory(state)}", hint=REPAIR_HINT)


def quick_check(state: State) -> list[str]:
    try:
        rows = [str(r[0]) for r in state.db.execute("PRAGMA quick_check(5)")]
    except Exception as exc:  # noqa: BLE001 - any failure to check is a failed check
        return [str(exc)]
    return [] if rows == ["ok"] else rows


def _write_atomic(target: Path, data: bytes) -> None:
    tmp = target.with_name(f".{target.name}.tmp{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        try:
            tmp.unlink()
        except FileNotFoundError:
            pass
        raise
    dfd = os.open(target.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)
