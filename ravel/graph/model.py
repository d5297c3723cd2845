"""The graph of an app: hosts as groups, networks as segments, VMs as nodes with their NICs
(network, address, device model), exposed services and, for a running app, each VM's state
and readiness. Pure: built from values (an AppPlan, or an app's blueprint and state records,
or `ravel status`'s VmStatus list), no I/O; the same input always gives an equal graph, in
blueprint order, so its renderings can be compared as text.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from typing import Any, Iterable, Mapping, Sequence

from ..model.blueprint import VM, Blueprint
from ..plan.app import AppPlan
from ..plan.network import NetworkPlan


@dataclass(frozen=True)
class NicNode:
    network: str
    model: str
    ip: str | None  # with its prefix length ("10.10.0.11/24"); None: the guest's own business
    mac: str | None


@dataclass(frozen=True)
class VmNode:
    name: str
    host: str | None  # None: not placed (yet)
    cpus: int
    memory_mib: int
    nested: bool
    nics: tuple[NicNode, ...]
    services: tuple[str, ...]  # "80/tcp"; for a running app as status shows them ("127.0.0.1:40123->80/tcp")
    state: str | None = None  # running, stopped, crashed...; None: a plan (nothing runs)
    ready: str | None = None  # ready, booting, not checked, "-"; None: a plan


@dataclass(frozen=True)
class NetNode:
    name: str
    subnet: str
    gateway: str | None
    dhcp: bool
    nat: bool


@dataclass(frozen=True)
class HostNode:
    name: str
    type: str | None  # the host type (local-small, m8i.large...)
    accel: str | None  # kvm | tcg


@dataclass(frozen=True)
class Graph:
    app: str
    kind: str  # "plan" (a blueprint FILE, planned) or "app" (as the state and hosts show it)
    hosts: tuple[HostNode, ...]
    networks: tuple[NetNode, ...]
    vms: tuple[VmNode, ...]

    def vm(self, name: str) -> VmNode:
        for v in self.vms:
            if v.name == name:
                return v
        raise KeyError(name)

    def on_host(self, host: str | None) -> tuple[VmNode, ...]:
        return tuple(v for v in self.vms if v.host == host)

    def to_dict(self) -> dict[str, Any]:
        """The `--format json` document (docs/schemas/graph.json): lists, not tuples."""
        return json.loads(json.dumps(asdict(self)))


def _services(vm: VM) -> tuple[str, ...]:
    return tuple(f"{s.port}/{s.protocol}" for s in vm.services)


def _networks(bp: Blueprint) -> tuple[NetNode, ...]:
    return tuple(NetNode(n.name, str(n.subnet), str(n.gateway) if n.gateway else None, n.dhcp, n.nat)
                 for n in bp.networks)


def from_network(bp: Blueprint, app: str, net: NetworkPlan) -> Graph:
    """A blueprint no host type can hold (its plan fails): every VM unplaced, NICs resolved."""
    vms = tuple(VmNode(vm.name, None, vm.cpus, vm.memory_mib, vm.nested,
                       tuple(NicNode(n.network, n.model, str(n.ip) if n.ip else None, n.mac) for n in net.of_vm(vm.name)),
                       _services(vm)) for vm in bp.vms)
    return Graph(app, "plan", (), _networks(bp), vms)


def from_app_plan(ap: AppPlan, kind: str = "plan") -> Graph:
    """A planned app: every host of the plan, every VM where the plan puts it, its NICs as the
    network plan resolved them (addresses fixed in the blueprint or leased, MACs)."""
    hosts = tuple(HostNode(h.name, h.type.name, h.accel) for h in ap.placement.hosts)
    vms = []
    for vm in ap.vms:
        nics = tuple(NicNode(n.network, n.model, str(n.ip) if n.ip else None, n.mac) for n in ap.nics(vm.name))
        vms.append(VmNode(vm.name, ap.placement.vm_host.get(vm.name), vm.cpus, vm.memory_mib, vm.nested,
                          nics, _services(vm)))
    return Graph(ap.app, kind, hosts, _networks(ap.blueprint), tuple(vms))


@dataclass(frozen=True)
class HostRow:
    """What the graph needs of a host record of the state."""

    name: str
    type: str | None
    accel: str | None


@dataclass(frozen=True)
class VmRow:
    """What the graph needs of a VM record of the state."""

    name: str
    host: str | None
    state: str
    ips: Sequence[str]  # one per NIC, in blueprint order ("" when ravel does not know it)
    macs: Sequence[str]


def from_records(bp: Blueprint, app: str, hosts: Iterable[HostRow], vms: Iterable[VmRow]) -> Graph:
    """A published app: its hosts and VMs as the state records them, the NICs' networks and
    models from the blueprint it was published from."""
    spec = {v.name: v for v in bp.vms}
    rows = list(vms)
    order = {v.name: i for i, v in enumerate(bp.vms)}
    rows.sort(key=lambda r: (order.get(r.name, len(order)), r.name))
    out = []
    for r in rows:
        vm = spec.get(r.name)
        nics: tuple[NicNode, ...] = ()
        if vm is not None:
            nics = tuple(NicNode(n.network, n.model, (r.ips[i] if i < len(r.ips) else "") or None,
                                 (r.macs[i] if i < len(r.macs) else "") or None)
                         for i, n in enumerate(vm.nics))
        out.append(VmNode(r.name, r.host, vm.cpus if vm else 0, vm.memory_mib if vm else 0,
                          vm.nested if vm else False, nics, _services(vm) if vm else (), r.state, None))
    return Graph(app, "app", tuple(HostNode(h.name, h.type, h.accel) for h in hosts), _networks(bp), tuple(out))


@dataclass(frozen=True)
class Live:
    """One VM as `ravel status` sees it now: the part of VmStatus the graph shows."""

    state: str
    ready: str
    services: tuple[str, ...] = ()
    booting_s: float | None = None


def with_live(g: Graph, live: Mapping[str, Live]) -> Graph:
    """The graph with each VM's state, readiness and exposed services as observed now."""
    vms = []
    for v in g.vms:
        seen = live.get(v.name)
        if seen is None:
            vms.append(v)
            continue
        vms.append(replace(v, state=seen.state, ready=seen.ready, services=seen.services or v.services))
    return replace(g, vms=tuple(vms))


# how a VM's state is drawn: (fill, border), shared by the DOT and Mermaid renderings and the UI
STATE_COLOURS = {
    None: ("#eef3fb", "#4a6fa5"),  # planned
    "running": ("#d8f0dc", "#2e7d32"),
    "booting": ("#fff4cc", "#b08800"),
    "stopped": ("#e6e6e6", "#666666"),
    "crashed": ("#f8d7da", "#b71c1c"),
    "powered off": ("#e6e6e6", "#666666"),
    "unreachable": ("#fde2c8", "#c25e00"),
    "missing": ("#f8d7da", "#b71c1c"),
}


def look(v: VmNode) -> str:
    """The key of STATE_COLOURS a VM is drawn with: a running VM not yet ready is `booting`."""
    if v.state is None:
        return "planned"
    if v.state == "running" and v.ready == "booting":
        return "booting"
    return v.state if v.state in STATE_COLOURS else "stopped"


def colours(v: VmNode) -> tuple[str, str]:
    key = look(v)
    return STATE_COLOURS.get(None if key == "planned" else key, STATE_COLOURS[None])


def vm_caption(v: VmNode) -> list[str]:
    """The lines under a VM's name: size, nested, state, exposed services."""
    lines = [f"{v.cpus} vCPU, {v.memory_mib} MiB" + (", nested" if v.nested else "")]
    if v.state is not None:
        lines.append(v.state + (f", {v.ready}" if v.state == "running" and v.ready not in (None, "-") else ""))
    lines.extend(f"exposed {s}" for s in v.services)
    return lines


def nic_caption(n: NicNode) -> str:
    """An edge's label: the NIC's address (or dhcp) and device model."""
    return f"{n.ip or 'no address'} {n.model}"


def nic_line(n: NicNode) -> str:
    """A NIC as a line of its VM's label: network, address, device model."""
    return f"{n.network}: {nic_caption(n)}"


def host_caption(h: HostNode) -> str:
    return h.name + (f" ({h.type}" + (f", {h.accel}" if h.accel else "") + ")" if h.type else "")


def net_caption(n: NetNode) -> list[str]:
    lines = [n.name, n.subnet]
    extra = [x for x, on in (("dhcp", n.dhcp), ("nat", n.nat)) if on]
    if n.gateway:
        extra.insert(0, f"gw {n.gateway}")
    if extra:
        lines.append(", ".join(extra))
    return lines
