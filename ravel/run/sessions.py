"""How the pipelines reach hosts: one transport (one SSH connection) and one installed host
runtime per host, opened on first use and closed once, shared by every stage of a command.

Stages receive a `HostSessions` explicitly (in a `Context`) and never keep their own
connections, so a host is reached once per command however many stages talk to it.
"""

from __future__ import annotations

import posixpath
import time
from dataclasses import replace
from typing import Callable, Iterator

from ..errors import StateError, TransportError
from ..host.desired import Desired, DesiredError, parse_desired
from ..paths import Paths, private_dir
from ..providers.base import AppliedHost, Host, Provider
from ..state import HostRecord, State
from ..transport.base import Transport
from ..transport.hostctl import HostRuntime, bundle, install
from ..events import Emit, Event, quiet
from . import state_backup

REACH_S = 120.0  # without a publish deadline: how long a host may take to answer at all


class HostSessions:
    """Per-host transports and runtimes of one command, keyed by (app, host)."""

    def __init__(self, paths: Paths, state: Callable[[], State]) -> None:
        self.paths = paths
        self._state = state  # opened by the Context only when a stage first needs it
        self._transports: dict[tuple[str, str], Transport] = {}
        self._runtimes: dict[tuple[str, str], HostRuntime] = {}

    def transport(self, provider: Provider, host: Host) -> Transport:
        """The host's transport, made once: SSH keeps one connection per host."""
        key = (host.app, host.name)
        if key not in self._transports:
            if not host.extra:  # a Host rebuilt by a caller: how to reach it is in the state
                rec = next((r for r in self._state().hosts(host.app) if r.name == host.name), None)
                if rec is not None and rec.extra.get("host"):
                    host = replace(host, extra=rec.extra["host"])
            self._transports[key] = provider.transport(host)
        return self._transports[key]

    def runtime(self, provider: Provider, host: Host, deadline: float | None = None,
                reach_s: float = REACH_S) -> HostRuntime:
        """The host runtime on `host`, sent there first if the host lacks this exact version.
        Reaching the host (an SSH host may still be booting) is bounded by `deadline`, else by
        `reach_s`; every later call is bounded by `deadline` too."""
        key = (host.app, host.name)
        rt = self._runtimes.get(key)
        if rt is None:
            t = self.transport(provider, host)
            left = reach_s if deadline is None else deadline - time.monotonic()
            if left <= 0:
                raise TransportError(f"{host.name}: out of time before the host was reached",
                                     hint="raise --timeout; publishing again continues where this stopped")
            # next to the app's run dir, so the app's clean-up takes it along
            remote = install(t, bundle(self.paths.cache), posixpath.dirname(host.run_root.rstrip("/")), left)
            rt = self._runtimes[key] = HostRuntime(t, remote)
        rt.deadline = deadline
        return rt

    def drop(self, app: str, host: str) -> None:
        """Forget a host that is gone: close its connection."""
        self._runtimes.pop((app, host), None)
        t = self._transports.pop((app, host), None)
        if t is not None:
            t.close()

    def close(self) -> None:
        for t in self._transports.values():
            t.close()
        self._transports.clear()
        self._runtimes.clear()


class Context:
    """What every stage of a command shares: where ravel keeps its files, the state, the
    sessions to the hosts, and where progress goes. The state is opened on first use, so the
    checks that need none (root, QEMU, cloud credentials) come first and leave nothing behind."""

    def __init__(self, paths: Paths, emit: Emit = quiet, check_lost: bool = True) -> None:
        self.paths = paths
        self.emit = emit
        self.hosts = HostSessions(paths, lambda: self.state)
        self._state: State | None = None
        # off only for the commands that work on a damaged state: repair, destroy --force
        self.check_lost = check_lost

    @property
    def state(self) -> State:
        if self._state is None:
            state = open_state(self.paths)
            if self.check_lost:
                try:
                    state_backup.check_not_lost(state)
                except BaseException:
                    state.close()
                    raise
            state.notice = lambda text: self.emit(Event("lock", text))
            if self.paths.data.is_dir():  # guest disks, layers, the store: an older ravel's was readable
                private_dir(self.paths.data)
            self._state = state
        return self._state

    def close(self) -> None:
        self.hosts.close()
        self.reset_state()

    def reset_state(self) -> None:
        """Close the state; the next use opens its file again (repair puts a new one there)."""
        if self._state is not None:
            self._state.close()
            self._state = None


def open_state(paths: Paths) -> State:
    try:
        return State(paths.state)
    except OSError as exc:
        raise StateError(f"cannot open the state in {paths.state}: {exc}",
                         hint="set RAVEL_HOME to a directory you can write") from None


def applied_desired(rec: HostRecord) -> Desired | None:
    """The desired state last applied to a host, as recorded; None when never applied (or
    recorded by a version whose document this one cannot read: nothing to act on safely)."""
    doc = rec.extra.get("desired")
    if not doc:
        return None
    try:
        return parse_desired(doc)
    except DesiredError:
        return None


def applied_hosts(state: State, app: str) -> Iterator[AppliedHost]:
    """The app's hosts that exist and hold an applied desired state, rebuilt from the state."""
    for r in state.hosts(app):
        desired = applied_desired(r)
        if r.ref and desired is not None:
            yield AppliedHost(recorded_host(app, r, desired), desired)


def recorded_host(app: str, rec: HostRecord, desired: Desired) -> Host:
    device = desired.underlay.device if desired.underlay else ""
    return Host(app, rec.name, rec.ref or "", rec.address or "", device, desired.run_dir, rec.extra.get("host") or {})
