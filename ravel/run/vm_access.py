"""Reaching one VM of an app: its serial console and its console log, read here when its host
shares this machine's files, else through the host's transport."""

from __future__ import annotations

import time
from typing import Callable, Iterator

from ..errors import MissingFile, StateError
from ..state import VmRecord
from ..transport.base import READ_LIMIT
from .terminal import attach, read_log, relay
from .observe import remote_hosts

from .sessions import Context


def vm_record(ctx: Context, app: str, vm: str) -> VmRecord:
    """Where a VM lives, from the state alone: reaching its console or log needs no
    observation of every host."""
    ctx.state.require_app(app)
    vms = ctx.state.vms(app)
    for v in vms:
        if v.name == vm:
            return v
    raise StateError(f"app {app!r} has no VM {vm!r} (VMs: {', '.join(v.name for v in vms)})")


def console(ctx: Context, app: str, vm: str, on_attached: Callable[[], None] = lambda: None) -> None:
    """Attach the terminal to a VM's serial console, directly or through the host's
    transport when the host does not share this machine's files."""
    target = vm_record(ctx, app, vm)
    remote = remote_hosts(ctx, app).get(target.host or "")
    if remote is None:
        attach(target.detail["console"], vm, on_attached=on_attached)
        return
    runtime = ctx.hosts.runtime(remote.provider, remote.host)
    chan = runtime.t.stream([runtime.python, runtime.pyz, "console", target.detail["console"]])
    on_attached()
    try:
        relay(chan)
    finally:
        chan.close()


def console_output(ctx: Context, app: str, vm: str, follow: bool = False,
                   poll_s: float = 0.5, max_s: float | None = None) -> Iterator[bytes]:
    """A VM's console log so far, then (with `follow`) what arrives; read through the
    host's transport when the host does not share this machine's files."""
    target = vm_record(ctx, app, vm)
    log = target.detail["log"]
    remote = remote_hosts(ctx, app).get(target.host or "")
    if remote is None:
        yield from read_log(log, vm, follow=follow, max_s=max_s)
        return
    t = ctx.hosts.transport(remote.provider, remote.host)
    offset = 0
    deadline = None if max_s is None else time.monotonic() + max_s
    while True:
        try:
            chunk = t.read(log, offset, READ_LIMIT)  # bytes as the guest wrote them, by offset
        except MissingFile:
            if offset == 0:
                raise StateError(f"{vm} has no console output yet") from None
            chunk = b""  # gone for now (the VM is being moved or restarted): keep following
        if chunk:
            offset += len(chunk)
            yield chunk
        caught_up = len(chunk) < READ_LIMIT
        if (caught_up and not follow) or (deadline is not None and time.monotonic() > deadline):
            return
        if caught_up:
            time.sleep(poll_s)
