"""Each host's desired state (the host runtime's typed `Desired`, ravel/host/desired.py), from
the app's resolved plan.

Pure: given the AppPlan and where each host lives, the documents are a deterministic function;
the host runtime turns one into the minimal changes. The document is built as the JSON the host
receives and parsed by the host's own parser here, so a bad document fails before anything runs
and both ends check it with the same code.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Mapping

from ..host.desired import Desired, parse_desired
from ..model.impair import effective
from ..plan.app import AppPlan
from ..plan.mtu import host_underlay_mtu
from ..plan.network import egress_mac
from .qemu import OVMF_VARS, VmFiles, netdev_id, qemu_argv, tap_name

SHUTDOWN_S = 60  # how long a stopping guest may take to shut down before its power is pulled


@dataclass(frozen=True)
class HostSite:
    """What the renderer needs to know about a provisioned host."""

    name: str
    address: str  # underlay address
    device: str  # underlay device
    run_dir: str  # runtime files of this app on this host (short path)
    data_dir: str  # disks of this app on this host
    accel: Literal["kvm", "tcg"]
    # underlay addresses (networks) guests' forwarded traffic must never reach, besides the
    # app's own hosts: the provider's other hosts and its own addresses there (docs/networking.md)
    deny: tuple[str, ...] = ()


def bridge_name(vni: int) -> str:
    return f"rb{vni}"


def vxlan_name(vni: int) -> str:
    return f"rx{vni}"


def disk_path(site: HostSite, vm: str, index: int) -> str:
    return f"{site.data_dir}/{vm}-disk{index}.qcow2"


def vars_path(site: HostSite, vm: str) -> str:
    return f"{site.data_dir}/{vm}-uefivars.qcow2"


QEMU_FORMAT = {"vhd": "vpc"}  # the blueprint's format names where QEMU's differ


def desired_states(
    ap: AppPlan,
    sites: Mapping[str, HostSite],
    running: Mapping[str, bool] | None = None,
    incoming: Mapping[str, str] | None = None,
    seeds: Mapping[str, str] | None = None,
    live: Mapping[str, Mapping[int, Mapping[str, Any]]] | None = None,
) -> dict[str, Desired]:
    """Host name -> desired state. `running[vm]` False keeps a VM defined but stopped.
    `incoming[vm]` names a saved memory state the VM resumes from instead of booting, when the
    host starts it for the first time (the argv stays the same: the host adds -incoming).
    `seeds[vm]` is the VM's cloud-init seed ISO on this machine (run/seeds.py). `live[vm][nic]`
    is what `ravel netem` and `ravel link` set on a NIC (its impairment, its cable pulled)."""
    docs = desired_docs(ap, sites, running, incoming, seeds, live)
    return {host: parse_desired(doc) for host, doc in docs.items()}


def desired_docs(
    ap: AppPlan,
    sites: Mapping[str, HostSite],
    running: Mapping[str, bool] | None = None,
    incoming: Mapping[str, str] | None = None,
    seeds: Mapping[str, str] | None = None,
    live: Mapping[str, Mapping[int, Mapping[str, Any]]] | None = None,
) -> dict[str, dict[str, Any]]:
    """The same as JSON documents, as the host runtime receives them."""
    bp, app, net = ap.blueprint, ap.app, ap.network
    running = running or {}
    live = live or {}
    incoming = incoming or {}
    gateways = ap.gateways()
    docs: dict[str, dict[str, Any]] = {}
    ksm = ap.plan.ksm_hosts()
    for host in ap.placement.hosts:
        site = sites[host.name]
        networks = []
        for network in bp.networks:
            here = ap.carriers.get(network.name, ())
            if host.name not in here:
                continue
            vni = net.vni[network.name]
            peers = [sites[h].address for h in here if h != host.name]
            fdb = sorted(
                ({"mac": n.mac, "dst": sites[ap.host_of(n.vm)].address}
                 for n in net.nics if n.network == network.name and ap.host_of(n.vm) != host.name),
                key=lambda e: e["mac"],
            )
            networks.append({"name": network.name, "vni": vni, "bridge": bridge_name(vni),
                             "vxlan": vxlan_name(vni), "mtu": network.mtu, "peers": peers, "fdb": fdb})
        taps, vms = [], []
        for name in host.vms:
            vm = bp.vm(name)
            nics = ap.nics(name)
            names = [tap_name(ap.ordinals[name], n.index) for n in nics]
            down = []
            for n, tap in zip(nics, names):
                settings = dict(live.get(name, {}).get(n.index) or {})
                impair = effective(vm.nics[n.index].impair, settings)
                taps.append({"name": tap, "bridge": bridge_name(net.vni[n.network]), "mtu": bp.network(n.network).mtu,
                             **({"impair": impair.to_doc()} if impair else {})})
                if settings.get("link") == "down":
                    down.append(netdev_id(n.index))
            files = VmFiles(site.run_dir, tuple(disk_path(site, name, i) for i in range(len(vm.disks))),
                            vars=vars_path(site, name) if vm.firmware == "uefi" else None,
                            seed=(seeds or {}).get(name))
            disks = []
            for i, d in enumerate(vm.disks):
                entry: dict[str, Any] = {"path": files.disks[i]}
                if d.image:
                    entry.update(base=d.image, base_format=QEMU_FORMAT.get(d.format or "", d.format))
                else:
                    entry["size_mib"] = d.size_mib
                disks.append(entry)
            if files.vars:  # the UEFI variable store: an overlay like a disk, after the last one
                base = vm.uefi_vars or OVMF_VARS
                disks.append({"path": files.vars, "base": base,
                              "base_format": "qcow2" if base.endswith(".qcow2") else "raw"})
            vms.append({
                "name": name,
                "running": running.get(name, True),
                "argv": qemu_argv(app, vm, nics, names, files, site.accel, gateways=gateways),
                "pidfile": files.path(name, "pid"),
                "qmp": files.path(name, "qmp"),
                "disks": disks,
                **({"incoming": incoming[name]} if name in incoming else {}),
                # a guest booting its own OS gets to shut down cleanly (its page cache reaches
                # the disk); a direct-kernel-boot appliance is powered off at once
                **({} if vm.kernel_boot else {"shutdown_s": SHUTDOWN_S}),
                **({"links_down": down} if down else {}),
            })
        docs[host.name] = {
            "version": 1,
            "app": app,
            "host": host.name,
            "run_dir": site.run_dir,
            "underlay": {"device": site.device, "address": site.address, "mtu": host_underlay_mtu([n["mtu"] for n in networks]),
                         **({"deny": list(site.deny)} if site.deny else {})},
            "networks": networks,
            "taps": taps,
            "vms": vms,
            **({"ksm": True} if host.name in ksm else {}),
        }
        router = router_section(ap, host.name, [n["name"] for n in networks])
        if router is not None:
            # exposed services: a port on this host's uplink DNAT'd to its guest (docs/networking.md)
            # (guests are IPv4: an IPv6 underlay cannot DNAT to them)
            router["expose"] = [{"vm": f.vm, "protocol": f.protocol, "port": ap.host_ports[(f.vm, f.port, f.protocol)],
                                 "to": f.target, "to_port": f.port}
                                for f in ap.forwards if f.host == host.name and ":" not in site.address]
            if not router["expose"]:
                del router["expose"]
            docs[host.name]["router"] = router
    return docs


def ready_check(ap: AppPlan, vm: str, site: HostSite) -> dict[str, Any]:
    """How the VM's host tells that it is ready (ravel/host/ready.py): its check, and where to
    look (first address, MAC and tap, console log, pidfile)."""
    v = ap.blueprint.vm(vm)
    check: dict[str, Any] = {"vm": vm, "kind": v.ready.kind, "log": f"{site.run_dir}/{vm}.log",
                             "pidfile": f"{site.run_dir}/{vm}.pid"}
    if v.ready.port:
        check["port"] = v.ready.port
    if v.ready.pattern:
        check["pattern"] = v.ready.pattern
    nics = ap.nics(vm)
    if nics:
        first = nics[0]
        check.update(mac=first.mac, tap=tap_name(ap.ordinals[vm], first.index))
        if first.ip is not None:
            check["ip"] = str(first.ip.ip)
    return check


def app_domain(app: str) -> str:
    return f"{app}.lab"


def router_section(ap: AppPlan, host: str, carried: list[str]) -> dict[str, Any] | None:
    """This host's piece of the app's distributed router (docs/networking.md): the gateway or
    service address on each carried network, routes and firewall rules between them, NAT, and
    what its DHCP/DNS server hands out. None when no carried network has any of that."""
    bp, app, net = ap.blueprint, ap.app, ap.network
    here = [n for n in bp.networks if n.name in carried and n.name in net.services]
    if not here:
        return None
    interfaces = []
    for n in here:
        svc = net.services[n.name]
        vni = net.vni[n.name]
        interfaces.append({
            "network": n.name, "bridge": bridge_name(vni), "vxlan": vxlan_name(vni),
            "address": svc.address.with_prefixlen, "mac": svc.mac,
            "egress_mac": egress_mac(app, host, n.name), "gateway": svc.gateway,
            "dhcp": n.dhcp, "dns": n.dns, "nat": n.nat, "mtu": n.mtu,
        })
    names_here = {n.name for n in here}
    routes = [[a, b] for a, b in net.routes if a in names_here and b in names_here]
    allow = [{"from": r.src, "to": r.dst, "protocol": r.protocol, "ports": [list(p) for p in r.ports]}
             for r in bp.firewall if r.src in names_here and r.dst in names_here]
    dhcp_nets = {n.name for n in here if n.dhcp}
    leases = [{"network": nic.network, "mac": nic.mac, "ip": str(nic.ip.ip), "name": nic.vm}
              for nic in net.nics if nic.network in dhcp_nets and nic.ip is not None]
    names = []
    if any(n.dns for n in here):
        names = [{"name": nic.vm, "ip": str(nic.ip.ip)} for nic in net.nics if nic.ip is not None]
    return {"domain": app_domain(app), "interfaces": interfaces, "routes": routes, "allow": allow,
            "leases": leases, "names": names}
