"""What an app's VMs are doing: `ravel status`, and waiting until every guest is ready."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from ..errors import RavelError, StateError, TransportError
from ..host.desired import Desired
from ..providers import get_provider
from ..providers.base import Host, Provider
from ..transport.base import Transport
from . import exposure
from ..events import Event
from .fanout import parallel

from .sessions import Context, applied_hosts

READY_MARKERS = ("RAVEL-READY", "login:", "RAVEL-RESUMED")  # resumed: noted by the host runtime
STATUS_S = 10.0  # status: how long to wait for a host's observation


@dataclass
class VmStatus:
    name: str
    host: str
    state: str  # running, stopped, missing; unreachable (the host did not answer)
    accel: str
    ips: list[str]
    macs: list[str]
    console: str
    log: str
    pid: int | None = None
    services: list[str] = field(default_factory=list)  # exposed: "127.0.0.1:40123->80/tcp"



def status(ctx: Context, app: str) -> list[VmStatus]:
    """Each VM as it is: pid files where the host shares this machine's files, else what the
    host runtime observes through the host's transport ("unreachable" if it does not answer)."""
    ctx.state.require_app(app)
    hosts = remote_hosts(ctx, app)

    def observe(name: str) -> dict[str, Any] | None:
        r = hosts[name]
        try:
            return ctx.hosts.runtime(r.provider, r.host, reach_s=STATUS_S).observe(r.desired, timeout=STATUS_S)["vms"]
        except (RavelError, KeyError, TypeError):
            return None

    observed = dict(zip(hosts, parallel(observe, list(hosts))))
    out = []
    for v in ctx.state.vms(app):
        d = v.detail
        state = v.state
        if v.host in observed:
            seen = observed[v.host]
            vm = (seen or {}).get(v.name) or {}
            pid = vm.get("pid") if vm.get("running") else None
            if seen is None and state == "running":
                state = "unreachable"
        else:
            pid = _live_pid(d["console"].rsplit(".", 1)[0] + ".pid")
        if state == "running" and pid is None:
            state = "missing"
        out.append(VmStatus(v.name, v.host or "", state, d.get("accel", ""), [ip for ip in d["ips"] if ip],
                            d["macs"], d["console"], d["log"], pid, exposure.labels(d)))
    return out


@dataclass(frozen=True)
class RemoteHost:
    """An applied host that does not share this machine's files."""

    host: Host
    desired: Desired
    provider: Provider


def remote_hosts(ctx: Context, app: str) -> dict[str, RemoteHost]:
    """The app's applied hosts that do not share this machine's files, by name."""
    out: dict[str, RemoteHost] = {}
    provider: Provider | None = None
    for a in applied_hosts(ctx.state, app):
        provider = provider or get_provider(ctx.state.require_app(app).provider, ctx.paths)
        if not ctx.hosts.transport(provider, a.host).is_local:
            out[a.host.name] = RemoteHost(a.host, a.desired, provider)
    return out


def wait_ready(ctx: Context, app: str, timeout: float) -> float:
    """Wait until every running VM's console shows a ready line; bounded by `timeout`.
    Console logs are read here on hosts that share this machine's files, else through the
    host's transport."""
    start = time.monotonic()
    deadline = start + max(timeout, 1.0)
    remote = {name: ctx.hosts.transport(r.provider, r.host) for name, r in remote_hosts(ctx, app).items()}
    pending: dict[str, dict[str, str]] = {}  # host -> VM -> console log
    for v in status(ctx, app):
        if v.state == "running":
            pending.setdefault(v.host, {})[v.name] = v.log
    while pending and time.monotonic() < deadline:
        for host, logs in list(pending.items()):
            for vm in _ready_vms(remote.get(host), logs, deadline):
                del logs[vm]
                ctx.emit(Event("wait", f"{vm} ready", vm=vm, done=True))
            if not logs:
                del pending[host]
        if pending:
            time.sleep(0.5 if remote else 0.1)
    if pending:
        late = sorted(vm for logs in pending.values() for vm in logs)
        raise StateError(f"VMs not ready after {timeout:.0f} s: {', '.join(late)}",
                         hint=f"see `ravel logs {app} VM` for their consoles")
    return time.monotonic() - start


def _ready_vms(t: Transport | None, logs: Mapping[str, str], deadline: float) -> list[str]:
    """VMs whose console log shows a ready marker: read here (t None), or on the host."""
    if t is None:
        found = []
        for vm, log in logs.items():
            try:
                with open(log, "rb") as fh:
                    text = fh.read().decode(errors="replace")
            except FileNotFoundError:
                continue
            if any(m in text for m in READY_MARKERS):
                found.append(vm)
        return found
    patterns = [arg for m in READY_MARKERS for arg in ("-e", m)]
    try:
        # -l: the names of the logs that match; a log not written yet is not an error here
        result = t.run(["grep", "-l", "-F", *patterns, "--", *logs.values()],
                       timeout=max(1.0, min(10.0, deadline - time.monotonic())), check=False)
    except TransportError:
        return []  # not answering right now: the overall deadline decides
    matched = set(result.stdout.splitlines())
    return [vm for vm, log in logs.items() if log in matched]



def _live_pid(pidfile: str) -> int | None:
    try:
        pid = int(Path(pidfile).read_text().strip())
    except (FileNotFoundError, ValueError):
        return None
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except FileNotFoundError:
        return None
    return pid if b"qemu" in cmdline else None
