"""`ravel doctor`: what is wrong with this set-up, and what would fix it. For now the state:
is the database sound, does it know every app its backups and the hosts show? Changes nothing
(`--repair-state` is repair.py)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..errors import StateDamaged
from ..providers import get_provider
from ..providers.base import HostFinder
from . import state_backup
from .sessions import Context


@dataclass
class StateCheck:
    path: Path
    problems: list[str] = field(default_factory=list)  # the database's own (integrity, unreadable)
    apps: list[str] = field(default_factory=list)
    backups: list[str] = field(default_factory=list)
    lost: list[str] = field(default_factory=list)  # backed up, not in the database
    unknown: list[str] = field(default_factory=list)  # on this machine's hosts, not in the database

    @property
    def sound(self) -> bool:
        return not (self.problems or self.lost or self.unknown)


def check_state(ctx: Context) -> StateCheck:
    state = ctx.state
    out = StateCheck(state.path, problems=state.integrity())
    out.backups = state_backup.backed_up(state)
    try:
        out.apps = [a.name for a in state.apps()]
    except StateDamaged as exc:
        out.problems = out.problems or [exc.message]
        return out
    out.lost = [a for a in out.backups if a not in out.apps]
    provider = get_provider("local", ctx.paths)
    if isinstance(provider, HostFinder):
        out.unknown = sorted({h.app for h in provider.found_hosts()} - set(out.apps))
    return out
