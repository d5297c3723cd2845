"""Lifetimes that need no ravel process: an app's expiry is recorded in the state and
enforced where the app runs (docs/ci.md, "Lifetimes").

- local (`Provider.lifetime == "reaper"`): a detached reaper process on this machine
  (run/reaper.py) sleeps until the expiry, re-reading it from the state (so `ravel extend` moves
  it), then destroys or stops the app; its pid and start time are in the state, so destroy ends it
  and a reused pid is never taken for it;
- aws ("host-timer"): every host powers itself off at the expiry (a timer from its boot data
  reads `EXPIRY_FILE`), and InstanceInitiatedShutdownBehavior makes that a terminate (or stop);
  ravel writes the file again when the expiry moves;
- gcp ("run-duration"): the instance's scheduling.maxRunDuration, applied by Compute Engine,
  fixed at creation (it can be changed only on a stopped instance).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Any

from ..errors import ProviderError, RavelError, TransportError
from ..events import Event
from ..model.blueprint import Lifetime
from ..model.durations import approx_duration
from ..paths import Paths
from ..plan.lifetime import LifetimeChoice, choose_lifetime
from ..plan.plan import Plan
from ..providers.base import Host, Provider
from ..render.cloud_init import EXPIRY_FILE
from ..state import LifetimeRecord, State
from ..transport.base import Transport
from .sessions import Context

REAPER_START_S = 10.0  # how long publish waits for a new reaper to say it runs
STOP_WAIT_S = 5.0


@dataclass(frozen=True)
class LifetimeRequest:
    """What the command line asked for (None: nothing)."""

    ttl_s: int | None = None  # --ttl
    budget: float | None = None  # --budget

    @property
    def given(self) -> bool:
        return self.ttl_s is not None or self.budget is not None


def settle(ctx: Context, app: str, provider: Provider, plan: Plan, blueprint: Lifetime | None,
           request: LifetimeRequest) -> LifetimeRecord | None:
    """Record the app's expiry at publish: what the command line asked for (from now), else
    the blueprint's `lifetime` the first time (a re-publish keeps the expiry it has), then make
    sure something enforces it."""
    current = ctx.state.lifetime(app)
    choice: LifetimeChoice | None = None
    if request.given or current is None:
        choice = choose_lifetime(request.ttl_s, request.budget, plan.placement.cost_per_hour, blueprint)
    if choice is not None:
        ctx.state.set_lifetime(app, time.time() + choice.ttl_s, choice.action, choice.source)
        ctx.emit(Event("lifetime", f"expires in {approx_duration(choice.ttl_s)} ({choice.source}), "
                                   f"then {choice.action}", done=True))
    record = ctx.state.lifetime(app)
    if record is not None and provider.lifetime == "reaper":
        ensure_reaper(ctx.paths, ctx.state, app)
    return ctx.state.lifetime(app)


def extend(ctx: Context, app: str, provider: Provider, ttl_s: int, hosts: list[tuple[Host, Any]]) -> LifetimeRecord:
    """`ravel extend APP --ttl D`: the app now expires D from now (earlier or later than before).
    `hosts`: (host, transport opener) of a host-timer provider's hosts, to write the new expiry."""
    rec = ctx.state.require_app(app)
    current = ctx.state.lifetime(app)
    if provider.lifetime == "run-duration":
        raise ProviderError(f"{rec.provider} applies an instance's maximum run time itself and changes it only on a "
                            f"stopped instance: app {app!r} keeps its expiry",
                            hint="publish with a longer --ttl next time, or `ravel destroy` it sooner")
    action = current.action if current else "destroy"
    source = "ravel extend"
    expires = time.time() + ttl_s
    ctx.state.set_lifetime(app, expires, action, source)
    if provider.lifetime == "reaper":
        ensure_reaper(ctx.paths, ctx.state, app)
    elif provider.lifetime == "host-timer":
        failed = []
        for host, opener in hosts:
            try:
                push_expiry(opener(host), expires)
            except (TransportError, RavelError) as exc:
                failed.append(f"{host.name}: {exc.message}")
        if failed:
            raise TransportError(f"the new expiry is recorded but not every host has it: {'; '.join(failed)}",
                                 hint=f"run `ravel extend {app}` again once the hosts answer; until then "
                                      "they power off at the old expiry")
    lifetime = ctx.state.lifetime(app)
    assert lifetime is not None
    return lifetime


def push_expiry(t: Transport, expires: float) -> None:
    """Write the expiry a cloud host's own timer reads (render/cloud_init.py)."""
    t.run(["sh", "-c", f"mkdir -p \"$(dirname {EXPIRY_FILE})\" && echo {int(expires)} > {EXPIRY_FILE}.tmp "
                       f"&& mv {EXPIRY_FILE}.tmp {EXPIRY_FILE}"], timeout=30)


# -- the local reaper ------------------------------------------------------------------------------

def process_start(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (/proc/PID/stat field 22): with the
    pid, it names one process for good (pids are reused, start times of one pid are not)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read().decode(errors="replace")
    except OSError:
        return None
    # the command name (field 2) is in parentheses and may hold spaces: split after it
    fields = stat[stat.rfind(")") + 2:].split()
    return fields[19] if len(fields) > 19 else None


def reaper_alive(rec: LifetimeRecord | None) -> bool:
    if rec is None or not rec.reaper_pid:
        return False
    start = process_start(rec.reaper_pid)
    return start is not None and start == rec.reaper_start


def ensure_reaper(paths: Paths, state: State, app: str) -> int | None:
    """Start the app's reaper unless one runs: detached (its own session, no terminal, cwd /),
    so it outlives this command and the terminal it ran in. Returns its pid."""
    rec = state.lifetime(app)
    if rec is None:
        return None
    if reaper_alive(rec):
        return rec.reaper_pid
    doc = {"state": str(paths.state), "data": str(paths.data), "cache": str(paths.cache), "run": str(paths.run)}
    env = dict(os.environ)
    # the reaper imports this very ravel, wherever it was loaded from
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    proc = subprocess.Popen([sys.executable, "-m", "ravel.run.reaper", app, json.dumps(doc)],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            cwd="/", env=env, start_new_session=True, close_fds=True)
    # recorded here at once (the reaper records itself too): a destroy right after this
    # publish finds it either way
    start = None
    deadline = time.monotonic() + 1.0
    while start is None and time.monotonic() < deadline:
        start = process_start(proc.pid)
        if start is None:
            time.sleep(0.01)
    state.set_reaper(app, proc.pid, start)
    return proc.pid


def stop_reaper(state: State, app: str) -> None:
    """End the app's reaper by its pid (checked against its start time), unless it is this
    process: a reaper destroying its app at expiry."""
    rec = state.lifetime(app)
    if not reaper_alive(rec) or rec is None or rec.reaper_pid == os.getpid():
        return
    pid = rec.reaper_pid
    assert pid is not None
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            break
        deadline = time.monotonic() + STOP_WAIT_S
        while time.monotonic() < deadline and process_start(pid) == rec.reaper_start:
            _reap_child(pid)
            time.sleep(0.02)
        if process_start(pid) != rec.reaper_start:
            break
    _reap_child(pid)
    state.set_reaper(app, None, None)


def _reap_child(pid: int) -> None:
    """A reaper started by this very process (a `ravel run` that published) is its child:
    collect its exit status so no zombie stays."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


# -- what status and list show ---------------------------------------------------------------------

@dataclass(frozen=True)
class Expiry:
    app: str
    expires: float  # epoch seconds
    action: str
    source: str
    left_s: float  # negative once expired
    enforcer: str  # who acts at expiry, as a phrase
    note: str | None
    hint: str | None  # what the user should do, when something is left to do

    def describe(self) -> str:
        when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(self.expires))
        if self.left_s > 0:
            text = f"expires in {approx_duration(self.left_s)} ({when}), then {self.action}; {self.enforcer}"
        else:
            text = f"expired {approx_duration(-self.left_s)} ago ({when}, {self.action}); {self.enforcer}"
        return text + (f"; {self.note}" if self.note else "")

    def to_dict(self) -> dict[str, Any]:
        return {"expires": self.expires, "action": self.action, "source": self.source,
                "left_s": round(self.left_s, 1), "enforcer": self.enforcer, "note": self.note, "hint": self.hint}


def expiry(state: State, app: str, provider_name: str, provider_lifetime: str) -> Expiry | None:
    rec = state.lifetime(app)
    if rec is None:
        return None
    left = rec.expires - time.time()
    hint = None
    if provider_lifetime == "reaper":
        alive = reaper_alive(rec)
        enforcer = f"reaper pid {rec.reaper_pid}" if alive else "its reaper is not running"
        if not alive and left > 0:
            hint = f"`ravel extend {app} --ttl D` starts it again"
        elif not alive and rec.action == "destroy":
            hint = f"`ravel destroy {app}` removes it"
    else:
        enforcer = ("the hosts power themselves off" if provider_lifetime == "host-timer"
                    else f"{provider_name} removes the hosts (maxRunDuration)")
        if left <= 0 and rec.action == "destroy":
            hint = (f"`ravel gc --provider {provider_name}` removes what the hosts left behind "
                    "(security groups, key pairs, firewall rules) and forgets the app")
    return Expiry(app, rec.expires, rec.action, rec.source, left, enforcer, rec.note, hint)


def expired_destroyed(state: State, provider_name: str) -> set[str]:
    """Apps of a cloud provider whose hosts have removed themselves (expired, action destroy):
    `ravel gc` collects what they left and forgets them."""
    now = time.time()
    out = set()
    for a in state.apps():
        if a.provider != provider_name:
            continue
        rec = state.lifetime(a.name)
        if rec is not None and rec.action == "destroy" and rec.expires <= now:
            out.add(a.name)
    return out
