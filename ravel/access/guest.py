"""A VM as the ways into it need it: its host and how to reach it, the address ravel gave its
first addressed NIC, whom ravel logs in as, the host key ravel made for it, its sockets."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import StateError
from ..providers import get_provider
from ..providers.base import Host, Provider
from ..run.hostrequest import recorded_transport
from ..run.sessions import Context, applied_hosts
from ..state import VmRecord


@dataclass(frozen=True)
class Guest:
    app: str
    vm: str
    host: Host
    provider: Provider
    running: bool
    address: str | None  # the first NIC's address ravel knows (fixed or a fixed lease)
    user: str | None  # whom ravel logs in as (cloud_init's user, or the VM's `user:`)
    host_key: str | None  # "ssh-ed25519 AAAA..." ravel made and pins; None: not ravel's to know
    agent: str | None  # the guest agent's socket on the host; None with `agent: false`
    vnc: str  # the VNC console's socket on the host
    via: str  # how its host is reached: netns (a namespace here) or ssh

    @property
    def alias(self) -> str:
        """The name tools use for it: `<vm>.<app>`."""
        return f"{self.vm}.{self.app}"


def guests(ctx: Context, app: str) -> list[Guest]:
    """Every VM of the app the state knows, on a host that holds an applied state."""
    rec = ctx.state.require_app(app)
    provider = get_provider(rec.provider, ctx.paths)
    hosts = {a.host.name: a.host for a in applied_hosts(ctx.state, app)}
    via = {r.name: recorded_transport(r.extra) or provider.transports[0] for r in ctx.state.hosts(app)}
    return [_guest(app, v, hosts[v.host], provider, via[v.host]) for v in ctx.state.vms(app) if v.host in hosts]


def guest(ctx: Context, app: str, vm: str) -> Guest:
    for g in guests(ctx, app):
        if g.vm == vm:
            return g
    names = [v.name for v in ctx.state.vms(app)]
    if vm in names:
        raise StateError(f"VM {vm} of app {app!r} has no host yet", hint=f"publish {app} again")
    raise StateError(f"app {app!r} has no VM {vm!r} (VMs: {', '.join(names) or 'none'})")


def _guest(app: str, v: VmRecord, host: Host, provider: Provider, via: str) -> Guest:
    d = v.detail
    address = next((ip.split("/")[0] for ip in d.get("ips") or () if ip), None)
    key = d.get("host_key") or None
    return Guest(app, v.name, host, provider, v.state == "running", address, d.get("user") or None,
                 " ".join(key.split()[:2]) if key else None, d.get("agent") or None, str(d.get("vnc") or ""), via)


def require_running(g: Guest) -> None:
    if not g.running:
        raise StateError(f"VM {g.vm} of app {g.app!r} is stopped", hint=f"ravel start {g.app} {g.vm}")


def require_ssh(g: Guest) -> None:
    """What SSH to a guest needs: an address, a user, and a host key to pin."""
    require_running(g)
    if g.address is None:
        raise StateError(f"VM {g.vm} of app {g.app!r} has no address ravel knows (its NICs have no fixed "
                         "address or lease)", hint=f"give a NIC an address, or use `ravel console {g.app} {g.vm}`")
    if g.host_key is None or g.user is None:
        raise StateError(f"VM {g.vm} of app {g.app!r} has no SSH host key ravel made (no `cloud_init`), so "
                         "there is no key to pin and its login is not known",
                         hint=f"set `cloud_init: true` on it, or use `ravel exec {g.app} {g.vm}` (guest agent) "
                              f"or `ravel console {g.app} {g.vm}`")
