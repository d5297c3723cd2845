"""`ravel run`: publish a lab, run one command against it on this machine, and always clean up.

    publish --wait -> COMMAND (RAVEL_APP, RAVEL_SSH_CONFIG, RAVEL_INVENTORY) -> destroy
                            \\-- failed: snapshot (when asked) -> destroy (unless kept)

A failure is COMMAND exiting non-zero, running past --timeout, or a publish that never got
ready. SIGINT, SIGTERM and SIGHUP end COMMAND (the same signal, then SIGKILL after a grace) and
destroy the app whatever --keep-on-failure says; a second signal skips (or cuts short) the
snapshot; the destroy itself is never cut short. The exit status is documented in docs/ci.md.
"""

from __future__ import annotations

import os
import re
import secrets
import shlex
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ..access.inventory import inventory, ssh_config_file
from ..errors import RavelError, StateError
from ..model.spec import NAME_RE
from ..run.blueprints import read_blueprint
from ..run.lab import Lab
from ..run.lifetime import LifetimeRequest
from .junit import PHASES, Phase, report

TIMED_OUT = 124  # COMMAND ran past --timeout (as coreutils' timeout says it)
KILL_GRACE_S = 10.0  # after the signal, before SIGKILL: a test runner's time to write its report
SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class Interrupted(BaseException):
    """A signal to ravel run, raised where the run stood (not an Exception: no `except
    Exception` in the library may swallow it, as with KeyboardInterrupt)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


@dataclass
class RunOptions:
    blueprint: str
    command: list[str]
    name: str | None = None
    provider: str = "local"
    snapshot_on_failure: bool = False
    memory: bool = False
    keep_on_failure: bool = False
    store: str | None = None
    junit: Path | None = None
    timeout: float | None = None  # COMMAND's bound
    publish_timeout: float = 600.0  # publish and ready together
    lifetime: LifetimeRequest = LifetimeRequest()
    # where COMMAND's stdout goes (a file descriptor; None: ravel's own stdout). `ravel run
    # --json` sends it to stderr, so stdout holds the run's document alone
    command_stdout: int | None = None


@dataclass
class RunResult:
    app: str
    status: int
    phases: list[Phase]
    snapshot: str | None = None
    kept: bool = False
    signal: int | None = None
    messages: list[str] = field(default_factory=list)


def default_app(blueprint_name: str) -> str:
    """The blueprint's name and a random suffix: parallel jobs on one machine never meet."""
    return f"{blueprint_name[:34].rstrip('-')}-{secrets.token_hex(2)}"


def failure_snapshot_name(app: str, when: float) -> str:
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime(when))
    return f"{app[:40 - len(stamp) - 8].rstrip('-')}-failed-{stamp}"


def publish_line(snapshot: str, opts: RunOptions) -> str:
    """The exact command that brings the failed lab back."""
    line = f"ravel publish --from {snapshot}"
    if opts.store:
        line += f" --store {opts.store}"
    if opts.provider != "local":
        line += f" --provider {opts.provider}"
    return line + " --wait"


class Run:
    def __init__(self, lab: Lab, opts: RunOptions, say: Callable[[str], None]) -> None:
        self.lab = lab
        self.opts = opts
        self.say = say  # ravel's own lines (stderr: COMMAND owns stdout)
        self.phases = {name: Phase(name) for name in PHASES}
        self.signals: list[int] = []
        self.stage = "start"
        self.stage_t = time.monotonic()
        self.child: subprocess.Popen[bytes] | None = None
        self.child_group = False

    # -- signals ---------------------------------------------------------------------------------
    def _on_signal(self, signum: int, frame: object) -> None:  # noqa: ARG002 - a handler's signature
        self.signals.append(signum)
        if len(self.signals) == 1:
            self.say(f"ravel run: {signal.Signals(signum).name}: ending the run, then destroying the app "
                     "(a second signal skips the snapshot)")
            if self.stage in ("publish", "ready", "command"):
                raise Interrupted(signum)
        elif self.stage == "snapshot":
            self.say("ravel run: second signal: the snapshot is abandoned; destroying the app")
            raise Interrupted(signum)
        # during destroy nothing is cut short: the app must go

    # -- the run -------------------------------------------------------------------------------------
    def run(self) -> RunResult:
        opts = self.opts
        started = time.time()
        try:
            bp = read_blueprint(opts.blueprint)
            app = opts.name or default_app(bp.name)
            if not re.match(NAME_RE, app):
                raise StateError(f"{app!r} is not a valid app name: lowercase letters, digits and dashes")
            if self.lab.state.app(app) is not None:
                # ravel run destroys what it made: never an app someone else is using
                raise StateError(f"app {app!r} already exists; ravel run makes a new app and destroys it after",
                                 hint="choose another --name (or leave it out for a unique one)")
        except RavelError as exc:  # nothing was made; the CI server still gets its report
            if opts.junit is not None:
                detail = [line for line in exc.lines() if line != exc.message] + ([exc.hint] if exc.hint else [])
                self.phases["publish"].done("error", 0.0, exc.message, "\n".join(detail))
                self._skip_after("publish", "publish failed")
                for name in ("snapshot", "destroy"):
                    self.phases[name].done("skipped", 0.0, "nothing was made")
                write_atomically(opts.junit, report(opts.name or "-", list(self.phases.values()), started,
                                                    socket.gethostname()))
            raise
        result = RunResult(app, 0, list(self.phases.values()))
        previous = {s: signal.signal(s, self._on_signal) for s in SIGNALS}
        try:
            try:
                failed = self._up_and_command(app, result)
            except Interrupted as exc:  # a signal just after COMMAND ended
                self._interrupted(exc.signum, result)
                failed = True
            if self.signals and result.signal is None:
                result.signal = self.signals[0]
            if failed and not self.signals and opts.keep_on_failure:
                result.kept = True
            self._snapshot(app, result, failed)
            self._destroy(app, result)
        finally:
            for s, h in previous.items():
                signal.signal(s, h)
            self._finish_child()
        if result.signal is not None:
            result.status = 128 + result.signal
        if opts.junit is not None:
            write_atomically(opts.junit, report(app, result.phases, started, socket.gethostname()))
        return result

    def _up_and_command(self, app: str, result: RunResult) -> bool:
        """Publish, wait until ready, run COMMAND; True when the run failed."""
        opts = self.opts
        p = self.phases
        t0 = time.monotonic()
        try:
            self._enter("publish")
            self.lab.publish(opts.blueprint, name=app, provider_name=opts.provider, wait=False,
                             timeout=opts.publish_timeout, lifetime=opts.lifetime)
            p["publish"].done("passed", time.monotonic() - t0, detail=f"app {app} on {opts.provider}")
            self._enter("ready")
            left = opts.publish_timeout - (time.monotonic() - t0)
            if left <= 0:
                raise StateError(f"no time left to wait for the VMs of {app} (--publish-timeout)")
            took = self.lab.wait_ready(app, left)
            p["ready"].done("passed", time.monotonic() - self.stage_t, detail=f"every VM ready after {took:.1f} s")
            self._enter("command")
            return self._command(app, result)
        except Interrupted as exc:
            self._interrupted(exc.signum, result)
            return True
        except RavelError as exc:
            p[self.stage].done("error", time.monotonic() - self.stage_t, exc.message, exc.hint or "")
            result.status = exc.exit_code
            result.messages.append(f"{self.stage} failed: {exc.message}")
            self._skip_after(self.stage, f"{self.stage} failed")
            return True

    def _command(self, app: str, result: RunResult) -> bool:
        opts = self.opts
        phase = self.phases["command"]
        ssh_config = ssh_config_file(self.lab.ctx, app)
        inv = inventory_file(self.lab, app)
        env = dict(os.environ, RAVEL_APP=app, RAVEL_SSH_CONFIG=str(ssh_config), RAVEL_INVENTORY=str(inv))
        shown = shlex.join(opts.command)
        self.say(f"ravel run: {shown}  (RAVEL_APP={app})")
        t = time.monotonic()
        # its own process group (unless it reads a terminal): ravel's signals are forwarded to
        # all of it, and its children too end with it
        self.child_group = not sys.stdin.isatty()
        try:
            self.child = subprocess.Popen(opts.command, env=env, stdout=opts.command_stdout,
                                          process_group=0 if self.child_group else None)
        except OSError as exc:
            phase.done("error", time.monotonic() - t, f"cannot start {opts.command[0]}: {exc.strerror}", shown)
            result.status = 127 if isinstance(exc, FileNotFoundError) else 126
            return True
        try:
            rc = self.child.wait(timeout=opts.timeout)
        except subprocess.TimeoutExpired:
            self._end_child(signal.SIGTERM)
            phase.done("failed", time.monotonic() - t, f"{shown} ran longer than --timeout {opts.timeout:g} s", shown)
            result.status = TIMED_OUT
            return True
        self.child = None
        took = time.monotonic() - t
        if rc == 0:
            phase.done("passed", took, detail=shown)
            return False
        why = f"killed by {signal.Signals(-rc).name}" if rc < 0 else f"exited with status {rc}"
        phase.done("failed", took, f"{shown} {why}")
        result.status = 128 - rc if rc < 0 else rc
        return True

    def _enter(self, stage: str) -> None:
        self.stage, self.stage_t = stage, time.monotonic()

    def _interrupted(self, signum: int, result: RunResult) -> None:
        result.signal = signum
        name = signal.Signals(signum).name
        if self.stage == "command" and self.child is not None:
            self._end_child(signum)
        if self.stage in ("publish", "ready", "command") and self.phases[self.stage].outcome == "skipped":
            self.phases[self.stage].done("error", time.monotonic() - self.stage_t, f"interrupted by {name}")
            self._skip_after(self.stage, f"interrupted by {name}")

    def _skip_after(self, stage: str, why: str) -> None:
        order = ["publish", "ready", "command"]
        for name in order[order.index(stage) + 1:]:
            self.phases[name].done("skipped", 0.0, why)

    def _snapshot(self, app: str, result: RunResult, failed: bool) -> None:
        opts = self.opts
        phase = self.phases["snapshot"]
        if not failed:
            phase.done("skipped", 0.0, "the run passed")
            return
        if not opts.snapshot_on_failure:
            phase.done("skipped", 0.0, "no --snapshot-on-failure")
            return
        if len(self.signals) > 1:
            phase.done("skipped", 0.0, "skipped by a second signal")
            return
        if not self.lab.state.vms(app):
            phase.done("skipped", 0.0, "the app has no VMs to snapshot")
            return
        self._enter("snapshot")
        t = time.monotonic()
        name = failure_snapshot_name(app, time.time())
        try:
            snap = self.lab.snapshot(app, name, opts.memory, opts.store)
        except Interrupted:
            phase.done("error", time.monotonic() - t, "abandoned: a second signal")
            return
        except RavelError as exc:
            phase.done("error", time.monotonic() - t, exc.message, exc.hint or "")
            result.messages.append(f"the failure snapshot failed: {exc.message}")
            return
        result.snapshot = snap.name
        line = publish_line(snap.name, opts)
        phase.done("passed", time.monotonic() - t, f"snapshot {snap.name} ({snap.vms} VMs)", line)
        self.say(f"ravel run: failure snapshot {snap.name}; publish it again with:")
        self.say(f"  {line}")

    def _destroy(self, app: str, result: RunResult) -> None:
        phase = self.phases["destroy"]
        if result.kept:
            phase.done("skipped", 0.0, "--keep-on-failure: the app is kept")
            self.say(f"ravel run: {app} is kept (--keep-on-failure); `ravel destroy {app}` removes it")
            return
        self._enter("destroy")
        t = time.monotonic()
        try:
            self.lab.destroy(app)
        except RavelError as exc:
            phase.done("error", time.monotonic() - t, exc.message, exc.hint or "")
            result.messages.append(f"destroy failed: {exc.message}")
            # the lab may be left running: that outranks COMMAND's own status
            if result.signal is None:
                result.status = exc.exit_code
            return
        phase.done("passed", time.monotonic() - t)

    # -- COMMAND's process ---------------------------------------------------------------------------
    def _send(self, signum: int) -> None:
        assert self.child is not None
        try:
            if self.child_group:
                os.killpg(self.child.pid, signum)
            else:
                self.child.send_signal(signum)
        except ProcessLookupError:
            pass

    def _end_child(self, signum: int) -> None:
        """The signal, a grace for it to finish, then SIGKILL: COMMAND (and its group) ends."""
        if self.child is None:
            return
        self._send(signum)
        try:
            self.child.wait(timeout=KILL_GRACE_S)
        except subprocess.TimeoutExpired:
            self._send(signal.SIGKILL)
            self.child.wait(timeout=KILL_GRACE_S)
        if self.child_group:  # whatever it left in its group goes too
            try:
                os.killpg(self.child.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.child = None

    def _finish_child(self) -> None:
        if self.child is not None:
            self._end_child(signal.SIGTERM)


def inventory_file(lab: Lab, app: str) -> Path:
    """`ravel inventory APP` as a file next to the app's ssh-config (destroy removes both)."""
    path = lab.paths.state / "inventory" / app
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{app}.tmp")
    tmp.write_text(inventory(lab.ctx, app, "yaml"))
    tmp.chmod(0o600)
    tmp.replace(path)
    return path


def write_atomically(path: Path, data: bytes) -> None:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    tmp.replace(path)


def run(lab: Lab, opts: RunOptions, say: Callable[[str], None]) -> RunResult:
    return Run(lab, opts, say).run()


__all__ = ["RunOptions", "RunResult", "run", "TIMED_OUT"]
