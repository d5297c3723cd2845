"""What AWS and GCP hosts have in common: resource names, the keys and boot data a host gets,
where SSH may come from, where the host runtime keeps files, and bounded polling.

Every cloud resource ravel makes carries the app, the host and this state's tag (`Paths.tag`),
so destroy and `ravel gc` find exactly what this ravel set-up made, and nothing of anyone else's.
"""

from __future__ import annotations

import ipaddress
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence, TypeVar

from .. import keys
from ..errors import ProviderError
from ..paths import Paths
from ..plan.network import ServiceForward, host_side_ports
from ..render.cloud_init import READY_FILE, BootData
from . import public_address
from .base import Exposure, Host

T = TypeVar("T")

SSH_USER = "root"  # the host runtime needs root (bridges, taps, QEMU); login is by key only
SSH_PORT = 22
# Where TCP 22 (and exposed services without an `allow`) may come from when neither --ssh-from
# nor RAVEL_SSH_FROM says: this machine's public address, learned from a "what is my IP"
# endpoint (public_address.py); if that fails, an error, never a silent 0.0.0.0/0.
HOST_ROOT = "/var/lib/ravel"  # on a cloud host: run/<app> (sockets, pids) and data/<app> (disks)
# what guests' NAT'd traffic never reaches besides the app's own hosts: the instance metadata
# service (the host's identity, and credentials if it ever has a role); docs/networking.md
GUEST_DENY = ("169.254.169.254/32",)
DEFAULT_DEADLINE_S = 600.0


def keys_dir(paths: Paths) -> Path:
    """ravel's SSH keys live next to the state (a 0700 directory), never in it."""
    return paths.state / "keys"


def resource_name(tag: str, app: str, host: str | None = None) -> str:
    """`ravel-<state tag>-<app>[-<host>]`: valid as an AWS name and a GCE name (<= 63 chars)."""
    return f"ravel-{tag}-{app}" + (f"-{host}" if host else "")


def ssh_from(value: str | None) -> str:
    """The CIDR TCP 22 is opened to: the given value, else RAVEL_SSH_FROM, else this machine's
    public address as a /32 (or /128). 0.0.0.0/0 only when the user gave it."""
    raw = (value or os.environ.get("RAVEL_SSH_FROM") or "").strip()
    if not raw:
        return public_address.learn()
    try:
        return str(ipaddress.ip_network(raw, strict=False))
    except ValueError:
        raise ProviderError(f"--ssh-from / RAVEL_SSH_FROM {raw!r} is not an address or CIDR",
                            hint="give your public address, e.g. 203.0.113.7/32") from None


def open_to_everyone(cidr: str) -> bool:
    return ipaddress.ip_network(cidr, strict=False).prefixlen == 0


# Hosts are made in parallel threads, and keys.user_key/host_key create on first use: one at a
# time, or two threads could each write a different key (or read a half-written one).
_KEYS_LOCK = threading.Lock()


def _user_key(kdir: Path) -> tuple[Path, str]:
    with _KEYS_LOCK:
        return keys.user_key(kdir)


def _host_key(kdir: Path, app: str, host: str) -> keys.KeyPair:
    with _KEYS_LOCK:
        return keys.host_key(kdir, app, host)


def boot_data(paths: Paths, app: str, host: str, mtu: int, expires: float | None = None) -> BootData:
    """The host key (made once and kept, so the host can be re-verified), ravel's user key and
    the app's expiry, if it has one."""
    kdir = keys_dir(paths)
    pair = _host_key(kdir, app, host)
    _, user_public = _user_key(kdir)
    return BootData(app=app, host=host, host_key_private=pair.private_openssh,
                    host_key_public=pair.public_line, user_key_public=user_public, mtu=mtu,
                    expires=int(expires) if expires is not None else None)


def user_public_key(paths: Paths) -> str:
    return _user_key(keys_dir(paths))[1]


@dataclass(frozen=True)
class Reach:
    """How ravel reaches a cloud host; kept in Host.extra["ssh"] (nothing secret in it)."""

    address: str
    host_key: str  # the pinned public host key line
    key_file: str  # ravel's private login key on this machine (0600)
    user: str = SSH_USER
    port: int = SSH_PORT

    def to_dict(self) -> dict[str, Any]:
        return {"address": self.address, "port": self.port, "user": self.user,
                "host_key": self.host_key, "key_file": self.key_file}


def reach(paths: Paths, app: str, host: str, address: str) -> Reach:
    kdir = keys_dir(paths)
    pair = _host_key(kdir, app, host)
    key_file, _ = _user_key(kdir)
    return Reach(address=address, host_key=pair.public_line, key_file=str(key_file))


def cloud_host(app: str, name: str, ref: str, private_ip: str, public_ip: str | None,
               paths: Paths, extra: dict[str, Any]) -> Host:
    """A Host as the pipeline wants it. The underlay device is learned from the host's ready
    report (it differs between instance families: ens5, eth0...), so it starts empty."""
    how = reach(paths, app, name, public_ip or private_ip)
    return Host(app, name, ref, private_ip, "", f"{HOST_ROOT}/run/{app}", {
        **extra,
        "private_ip": private_ip,
        "public_ip": public_ip,
        "ssh": how.to_dict(),
    }, data_dir=f"{HOST_ROOT}/data/{app}/{name}", guest_deny=tuple(GUEST_DENY), ready_file=READY_FILE)


def exposures_for(hosts: Mapping[str, Host], forwards: Sequence[ServiceForward]) -> list[Exposure]:
    """What a cloud exposes for `forwards`: each service on its host's public address, at the
    port the host runtime forwards (plan.network.host_side_ports, the same function its
    desired document is rendered with), open to the service's `allow` or, without one, to
    where SSH is allowed from (the user's address)."""
    ports = host_side_ports(tuple(forwards))
    out = []
    for fw in forwards:
        host = hosts[fw.host]
        user = str(host.extra.get("ssh_from") or "") or ssh_from(None)
        sources = sorted({str(ipaddress.ip_network(a, strict=False)) for a in fw.allow}) or [user]
        out.append(Exposure(fw.vm, fw.port, fw.protocol, str(host.extra.get("public_ip") or host.address),
                            ports[(fw.vm, fw.port, fw.protocol)], fw.target, fw.host, {"sources": sources}))
    return out


def ssh_transport(host: Host) -> Any:
    """The pinned-key SSH transport for a cloud host (ravel.transport.ssh, imported lazily)."""
    from ..transport.ssh import SSHTransport

    if "ssh" not in host.extra:
        raise ProviderError(f"{host.name}: the state has no SSH address for this host",
                            hint="re-run `ravel publish` to record it")
    return SSHTransport.from_spec(host.name, host.extra["ssh"])


def remaining(deadline: float | None, default: float = DEFAULT_DEADLINE_S) -> float:
    if deadline is None:
        return default
    return max(0.0, deadline - time.monotonic())


def poll(check: Callable[[], T | None], deadline: float, what: str, first: float = 0.5,
         ceiling: float = 5.0) -> T:
    """Call `check` until it returns something, backing off from `first` to `ceiling` seconds;
    ProviderError naming `what` once `deadline` (time.monotonic) passes."""
    delay = first
    while True:
        got = check()
        if got is not None:
            return got
        left = deadline - time.monotonic()
        if left <= 0:
            raise ProviderError(f"{what}: still not done when the time ran out",
                                hint="raise --timeout, or re-run: every step is resumable")
        time.sleep(min(delay, left))
        delay = min(delay * 2, ceiling)
