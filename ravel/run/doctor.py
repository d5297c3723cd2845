"""`ravel doctor`, the state's part: is the database sound, does it know every app its backups
and the hosts show? Changes nothing (`--repair-state` is repair.py; the machine's part is
machine.py)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..errors import StateDamaged
from ..providers import get_provider
from ..providers.base import HostFinder
from . import state_backup
from .checks import Check
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


def state_line(check: StateCheck) -> Check:
    """The state check as one line of `ravel doctor` (required: every command needs the state)."""
    if check.sound:
        return Check("state", True, True, f"{check.path}: sound, {len(check.apps)} app(s), "
                     f"{len(check.backups)} backed up")
    found = [f"damaged: {p}" for p in check.problems]
    if check.lost:
        found.append(f"lost apps (they have backups): {', '.join(check.lost)}")
    if check.unknown:
        found.append(f"apps on this machine's hosts the state does not know: {', '.join(check.unknown)}")
    return Check("state", False, True, f"{check.path}: {'; '.join(found)}", "ravel doctor --repair-state")
