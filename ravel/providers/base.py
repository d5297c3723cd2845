"""Where hosts come from. Each provider makes hosts, hands out a transport, and removes hosts."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Mapping, Protocol, Sequence, runtime_checkable

from ..transport.base import Transport

if TYPE_CHECKING:  # annotations only: `ravel proxy` and `ravel ssh` load this module and start light
    from ..host.desired import Desired
    from ..plan.network import ServiceForward


@dataclass(frozen=True)
class HostSpec:
    app: str
    name: str  # host-1, host-2... from the plan
    host_id: int  # unique across apps in this state
    type: str
    # cloud providers only: the host image (--host-image), where SSH may come from
    # (--ssh-from), and a token the pipeline records before asking, so a retried or resumed
    # create is recognised by the cloud instead of making a second host (ClientToken, request_id)
    image: str | None = None
    ssh_from: str | None = None
    token: str = ""
    deadline: float | None = None  # time.monotonic() by which the host must exist (--timeout)
    # how ravel reaches the host: one of the provider's `transports`; "" = its first (default)
    transport: str = ""
    # the app's expiry (epoch seconds) and what happens then (destroy | stop), for providers whose
    # hosts enforce it themselves (`Provider.lifetime`); None: the app lives until destroyed
    expires: float | None = None
    expiry_action: str = "destroy"


@dataclass(frozen=True)
class Host:
    app: str
    name: str
    ref: str  # provider's id: namespace name, instance id
    address: str  # underlay address other hosts send VXLAN to
    device: str  # underlay device on the host
    run_root: str  # where the host runtime keeps this app's files on the host
    extra: dict[str, Any] = field(default_factory=dict)  # the provider's own: how to reach it
    # where the app's disks live on the host; None: on this machine (the host shares its files)
    data_dir: str | None = None
    # underlay addresses (networks) guests' forwarded traffic must never reach, besides the
    # app's own hosts: the provider's other hosts and its own addresses there (docs/networking.md)
    guest_deny: tuple[str, ...] = ()
    # a file the host writes once its bootstrap is done (cloud hosts; ravel.render.cloud_init)
    ready_file: str | None = None


@dataclass(frozen=True)
class AppliedHost:
    """A host as the state knows it once a desired state was applied to it."""

    host: Host
    desired: Desired


@dataclass(frozen=True)
class Exposure:
    """A guest service reachable from outside the app: users connect to address:host_port."""

    vm: str
    port: int
    protocol: str
    address: str  # 127.0.0.1 locally; the host's public address on clouds
    host_port: int
    target: str  # the guest address it leads to
    host: str  # the VM's host
    extra: dict[str, Any] = field(default_factory=dict)  # the provider's handle (pid, rule id)

    def label(self) -> str:
        return f"{self.address}:{self.host_port}->{self.port}/{self.protocol}"


@runtime_checkable
class ServiceExposer(Protocol):
    """A provider that can expose guests' services (`services:` in a blueprint)."""

    def expose(self, app: str, hosts: Mapping[str, Host], forwards: Sequence[ServiceForward],
               current: Sequence[Exposure]) -> list[Exposure]:
        """Make exactly `forwards` reachable, keeping what in `current` still matches (same
        port for the user) and ending the rest; returns what is exposed now. Idempotent."""

    def unexpose(self, app: str, current: Sequence[Exposure]) -> None:
        """End every exposure in `current`; fine if some are already gone."""


@runtime_checkable
class Provider(Protocol):
    name: str
    # the ways its hosts can be reached (`ravel publish --transport`), the default first: never
    # empty, and `transport()` of a host made with `HostSpec.transport` = one of them is that kind
    # ("netns": NamespaceTransport, "ssh": SSHTransport)
    transports: tuple[str, ...]
    # who enforces an app's expiry (run/lifetime.py): "reaper" (a detached process on this
    # machine), "host-timer" (each host powers itself off; the cloud then terminates or stops
    # it), "run-duration" (the cloud's own maximum run time, fixed when a host is made)
    lifetime: str

    def preflight(self) -> None:
        """Raise EnvironmentProblem when this machine or account cannot run hosts at all."""

    def ensure_host(self, spec: HostSpec) -> Host:
        """Create the host, or find it already made; idempotent."""

    def transport(self, host: Host) -> Transport: ...

    def delete_host(self, app: str, name: str, host_id: int) -> None:
        """Remove the host and everything on it; idempotent, fine if it never existed."""

    def leftover_hosts(self, app: str) -> list[str]:
        """Hosts of `app` that exist on the provider (by name), whatever the state says."""

    def cleanup(self) -> None:
        """Remove shared infrastructure no app uses any more."""


@dataclass(frozen=True)
class FoundHost:
    """A host that exists on a provider, as the provider itself shows it (no state needed)."""

    app: str
    name: str
    ref: str  # the provider's id: namespace name, instance id
    address: str  # underlay address ("" when it has none)
    host_id: int  # the id its devices and address were made from (0: unknown)
    vnis: tuple[int, ...] = ()  # the VXLAN network ids of its devices


@runtime_checkable
class HostFinder(Protocol):
    """A provider that can list every host it has for this set-up, for any app: what `ravel
    doctor --repair-state` rebuilds a lost state from."""

    def found_hosts(self, app: str | None = None) -> list[FoundHost]:
        """Every host of this set-up the provider has (only app `app`'s, when given)."""


@runtime_checkable
class GarbageCollector(Protocol):
    """A provider that can list and remove what it made for apps the state no longer knows."""

    def garbage(self, known_apps: set[str], any_state: bool = False) -> list[str]:
        """Describe (one line each) every resource made by ravel for an app not in `known_apps`;
        only this state's resources unless `any_state`."""

    def collect(self, known_apps: set[str], any_state: bool = False) -> list[str]:
        """Remove what `garbage` lists; returns what was removed. Idempotent."""
