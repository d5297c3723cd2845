"""Where hosts come from. Each provider makes hosts, hands out a transport, and removes hosts."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from ..transport.base import Transport


@dataclass(frozen=True)
class HostSpec:
    app: str
    name: str  # host-1, host-2... from the plan
    host_id: int  # unique across apps in this state
    type: str


@dataclass(frozen=True)
class Host:
    app: str
    name: str
    ref: str  # provider's id: namespace name, instance id
    address: str  # underlay address other hosts send VXLAN to
    device: str  # underlay device on the host
    run_root: str  # where the host runtime keeps this app's files on the host
    extra: dict[str, Any] = field(default_factory=dict)


class Provider(Protocol):
    name: str

    def preflight(self) -> None:
        """Raise EnvironmentProblem when this machine or account cannot run hosts at all."""

    def ensure_host(self, spec: HostSpec) -> Host:
        """Create the host, or find it already made; idempotent."""

    def transport(self, host: Host) -> Transport: ...

    def delete_host(self, app: str, name: str, host_id: int) -> None:
        """Remove the host and everything on it; idempotent, fine if it never existed."""

    def move_file(self, src_host: str, src: str, dst_host: str, dst: str) -> None:
        """Carry a (stopped) VM's disk from one host to another; nothing if already there."""

    def leftover_hosts(self, app: str) -> list[str]:
        """Hosts of `app` that exist on the provider (by name), whatever the state says."""

    def cleanup(self) -> None:
        """Remove shared infrastructure no app uses any more."""
