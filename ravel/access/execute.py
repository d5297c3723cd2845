"""`ravel exec APP VM -- COMMAND...`: a command run in the guest by its QEMU guest agent."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Sequence

from ..errors import StateError
from ..run.sessions import Context
from .agent import Finished, GuestAgent
from .channel import unix
from .guest import Guest, guest, require_running


@contextmanager
def agent_of(ctx: Context, g: Guest) -> Iterator[GuestAgent]:
    """A synced agent session with the guest (AgentError when no agent answers)."""
    require_running(g)
    if g.agent is None:
        raise StateError(f"VM {g.vm} of app {g.app!r} has no guest agent channel (`agent: false`)",
                         hint=f"ravel ssh {g.app} {g.vm}")
    link = unix(ctx, g, g.agent, "guest agent channel")
    try:
        ga = GuestAgent(link, g.vm)
        ga.sync()
        yield ga
    finally:
        link.close()


def execute(ctx: Context, app: str, vm: str, argv: Sequence[str], stdin: bytes | None, timeout: float) -> Finished:
    if not argv:
        raise StateError("no command given", hint=f"ravel exec {app} {vm} -- COMMAND...")
    with agent_of(ctx, guest(ctx, app, vm)) as ga:
        return ga.run(argv, stdin, timeout)
