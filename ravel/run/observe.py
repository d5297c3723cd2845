"""What an app's VMs are doing: `ravel status`, and waiting until every guest is ready."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any, Mapping

from ..errors import RavelError, StateError
from ..host import ready as host_ready
from ..host.desired import Desired
from ..providers import get_provider
from ..providers.base import Host, Provider
from ..state import VmRecord
from ..transport.hostrun import HostRun
from . import exposure, health
from ..events import Event
from .fanout import parallel
from .nics import nic_states

from .sessions import Context, applied_hosts

STATUS_S = 10.0  # status: how long to wait for a host's observation
READY_POLL_S = 1.0  # --wait: how soon a host's watch that ended early is started again
WATCH_S = 0.5  # --wait: how often each host checks its guests (in one process on the host)


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
    ready: str = "-"  # ready, booting, not checked; "-" when not running or not known
    check: str = ""  # what readiness means for this VM: ssh, lease, console /regex/...
    booting_s: float | None = None  # how long it has been booting (not yet ready)
    seen: str = ""  # what its check saw last
    user: str = ""  # whom ravel logs in as (cloud_init or `user:`)
    host_key: str = ""  # the guest's SSH host key ravel made and pins (public half)
    # crashed or powered off: how its QEMU ended (exit status or signal, when), and the last
    # lines its console printed
    reason: str = ""
    tail: list[str] = field(default_factory=list)
    ended_at: float | None = None  # when (epoch seconds), where its supervisor recorded it
    # each NIC: {"nic", "network", "link": "up"|"down", "impair": {...} (empty: none),
    # "impair_source": "blueprint"|"live"|""} (docs/netem.md)
    nics: list[dict[str, Any]] = field(default_factory=list)


@dataclass(frozen=True)
class Readiness:
    ready: bool
    seen: str
    booting_s: float | None
    last_line: str


def status(ctx: Context, app: str, known: Mapping[str, Readiness] | None = None) -> list[VmStatus]:
    """Each VM as it is: pid files where the host shares this machine's files, else what the
    host runtime observes through the host's transport ("unreachable" if it does not answer);
    and, for running VMs, whether their readiness check passes (asked on their hosts, unless
    `known` already says, as right after `--wait`: asking again costs a probe per guest)."""
    ctx.state.require_app(app)
    hosts = remote_hosts(ctx, app)

    def observe(name: str) -> dict[str, Any] | None:
        r = hosts[name]
        try:
            return ctx.hosts.runtime(r.provider, r.host, reach_s=STATUS_S).observe(r.desired, timeout=STATUS_S)["vms"]
        except (RavelError, KeyError, TypeError):
            return None

    observed = dict(zip(hosts, parallel(observe, list(hosts))))
    health.remember(ctx.state, app, observed)
    records = ctx.state.vms(app)
    checked = dict(known) if known is not None else readiness(ctx, app, [v for v in records if v.state == "running"])
    try:
        per_vm: dict[str, list[dict[str, Any]]] = {}
        for n in nic_states(ctx, app):
            per_vm.setdefault(n.vm, []).append({"nic": n.index, "network": n.network, "link": n.link,
                                                "impair": n.impair.to_doc(), "impair_source": n.source})
    except RavelError:  # an app recovered without its blueprint: no NIC settings to show
        per_vm = {}
    out = []
    for v in records:
        d = v.detail
        state = v.state
        ended: dict[str, Any] = {}
        if v.host in observed:
            seen = observed[v.host]
            vm = (seen or {}).get(v.name) or {}
            pid = vm.get("pid") if vm.get("running") else None
            if seen is None and state == "running":
                state = "unreachable"
            ended = vm
        else:
            pid = health.live_pid(health.pidfile(d))
            if state == "running" and pid is None:
                ended = health.local_end(d)
        if state == "running" and pid is None:
            state = health.down_state(ended)
        status = VmStatus(v.name, v.host or "", state, d.get("accel", ""), [ip for ip in d["ips"] if ip],
                          d["macs"], d["console"], d["log"], pid, exposure.labels(d), check=describe(_check(v)),
                          user=d.get("user", ""), host_key=d.get("host_key", ""), nics=per_vm.get(v.name, []))
        if state in ("crashed", "powered off"):
            status.reason, status.tail = str(ended.get("reason") or ""), list(ended.get("tail") or [])
            record = ended.get("ended")
            status.ended_at = float(record["at"]) if isinstance(record, dict) and record.get("at") else None
        r = checked.get(v.name)
        if state == "running" and r is not None:
            status.ready = "not checked" if _check(v)["kind"] == "none" else "ready" if r.ready else "booting"
            status.booting_s = None if r.ready else r.booting_s
            status.seen = r.seen
        out.append(status)
    return out


def _check(v: VmRecord) -> dict[str, Any]:
    """The VM's readiness check as recorded at publish; an app published before checks were
    recorded is ready, as it was then, when its console shows the usual markers."""
    return v.detail.get("ready") or {"vm": v.name, "kind": "console", "log": v.detail["log"],
                                     "pidfile": v.detail["console"].rsplit(".", 1)[0] + ".pid"}


def describe(check: Mapping[str, Any]) -> str:
    kind = check.get("kind", "")
    if kind == "tcp":
        return f"tcp port {check.get('port')}"
    if kind == "console" and check.get("pattern"):
        return f"console /{check['pattern']}/"
    return str(kind)


def readiness(ctx: Context, app: str, vms: list[VmRecord], timeout: float = STATUS_S) -> dict[str, Readiness]:
    """Each VM's readiness, asked on its host (every provider: the guest networks exist only
    there); VMs whose host does not answer are left out."""
    by_host: dict[str, list[dict[str, Any]]] = {}
    for v in vms:
        if v.host:
            by_host.setdefault(v.host, []).append(_check(v))
    if not by_host:
        return {}
    provider = get_provider(ctx.state.require_app(app).provider, ctx.paths)
    applied = {a.host.name: a for a in applied_hosts(ctx.state, app)}

    def ask(host: str) -> dict[str, Any]:
        a = applied.get(host)
        if a is None:
            return {}
        try:
            rt = ctx.hosts.runtime(provider, a.host, reach_s=timeout)
            # the host's own checks have their bounds; the call waits for them on top of its own
            return rt.ready(a.desired.run_dir, by_host[host],
                            timeout=timeout + host_ready.worst_case_s()).get("vms") or {}
        except (RavelError, KeyError, TypeError):
            return {}

    out: dict[str, Readiness] = {}
    for report in parallel(ask, list(by_host)):
        for name, r in report.items():
            out[name] = Readiness(bool(r.get("ready")), str(r.get("seen") or ""), r.get("booting_s"),
                                  str(r.get("last_line") or ""))
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
    """Seconds until every running VM is ready (see `await_ready`)."""
    return await_ready(ctx, app, timeout)[0]


def await_ready(ctx: Context, app: str, timeout: float) -> tuple[float, dict[str, Readiness]]:
    """Wait until every running VM passes its readiness check, bounded by `timeout`. Each host
    checks its own guests in one long-running `ravel-host wait-ready` (a report line every half
    second, through the host's transport), so waiting costs the guests no CPU. A VM that never
    gets there fails with one line: the VM, its check and the last thing it showed."""
    start = time.monotonic()
    deadline = start + max(timeout, 1.0)
    pending = {v.name: v for v in ctx.state.vms(app) if v.state == "running"}
    total = len(pending)
    last: dict[str, Readiness] = {}
    by_host: dict[str, list[dict[str, Any]]] = {}
    for v in pending.values():
        by_host.setdefault(v.host or "", []).append(_check(v))
    provider = get_provider(ctx.state.require_app(app).provider, ctx.paths)
    applied = {a.host.name: a for a in applied_hosts(ctx.state, app)}
    runs: dict[str, HostRun] = {}
    seen: dict[str, int] = {}
    retry_at: dict[str, float] = {host: start for host in by_host if host in applied}
    try:
        while pending and time.monotonic() < deadline:
            for host, when in list(retry_at.items()):  # (re)start a host's watch
                if time.monotonic() < when:
                    continue
                del retry_at[host]
                a = applied[host]
                try:
                    rt = ctx.hosts.runtime(provider, a.host, reach_s=max(1.0, deadline - time.monotonic()))
                    # local hosts share this machine's cores: the more guests boot per core, the
                    # longer each check may wait for an answer (host/ready.py)
                    slow = len(pending) / len(os.sched_getaffinity(0)) if provider.name == "local" else 1.0
                    runs[host] = HostRun(host, rt, {"run_dir": a.desired.run_dir, "checks": by_host[host],
                                                    "interval": WATCH_S, "max_s": deadline - time.monotonic(),
                                                    "slow": max(1.0, slow)},
                                         command="wait-ready")
                    seen[host] = 0
                except RavelError:
                    retry_at[host] = time.monotonic() + READY_POLL_S
            for host, run in list(runs.items()):
                while seen[host] < run.received():
                    doc = run.next(seen[host], 0)
                    seen[host] += 1
                    if not isinstance(doc.get("vms"), dict):  # it ended (all ready) or failed: again
                        runs.pop(host).finish()
                        if any(c["vm"] in pending for c in by_host[host]):
                            retry_at[host] = time.monotonic() + READY_POLL_S
                        break
                    for name, r in doc["vms"].items():
                        last[name] = Readiness(bool(r.get("ready")), str(r.get("seen") or ""), r.get("booting_s"),
                                               str(r.get("last_line") or ""))
                        if last[name].ready and name in pending:
                            del pending[name]
                            ctx.emit(Event("wait", f"{name} ready ({total - len(pending)} of {total} ready, "
                                                   f"{len(pending)} booting)", vm=name, done=True))
            if pending:
                time.sleep(min(WATCH_S / 2, max(0.0, deadline - time.monotonic())))
    finally:
        for run in runs.values():
            run.finish()
    if pending:
        late = sorted(pending)
        name = late[0]
        r = last.get(name)
        what = f"{describe(_check(pending[name]))} check"
        if r is None:
            seen_text = "its host did not answer"
        else:
            line = f"last console line {r.last_line!r}" if r.last_line else "no console output"
            seen_text = f"{r.seen}; {line}" if "console" not in r.seen else r.seen
        others = f" (and {len(late) - 1} more: {', '.join(late[1:])})" if len(late) > 1 else ""
        raise StateError(f"VM {name} not ready after {timeout:.0f} s{others}: {what}: {seen_text}",
                         hint=f"see `ravel logs {app} {name}` for its console; `ready:` in the blueprint "
                              "chooses the check")
    return time.monotonic() - start, last
