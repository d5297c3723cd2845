"""The desired document both ways: ``parse_desired`` (one table-driven walker) and its inverse
``to_doc``, on the renderer's documents and on generated ones; the problems the walker names."""

from __future__ import annotations

import copy
import ipaddress
import json
import textwrap

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ravel.host.desired import VM, Desired, DesiredError, Disk, parse_desired, to_doc
from ravel.model.resolve import load_blueprint
from ravel.plan.app import resolve_app
from ravel.plan.catalogue import load_catalogue
from ravel.plan.network import plan_network
from ravel.plan.plan import make_plan
from ravel.render.host_state import HostSite, desired_docs, desired_states

LAB = textwrap.dedent("""\
    name: rt
    networks:
      front: {subnet: 10.61.0.0/24, gateway: 10.61.0.1, dhcp: true, dns: true, nat: true}
      back: {subnet: 10.62.0.0/24, gateway: 10.62.0.1, dhcp: true, dns: true}
      l2: {subnet: 10.64.0.0/24}
    firewall:
      allow:
        - {from: back, to: front, protocol: tcp, ports: [8080, "9000-9010"]}
    defaults: {cpus: 1, memory: 64MiB, boot: {kernel: /k, initrd: /i, cmdline: x}}
    vms:
      web:
        nics: [{network: front}, {network: l2}]
        services: [{port: 80}, {port: 53, protocol: udp}]
        disks: [{image: /base.vmdk, bus: sata}, {size: 1GiB}]
      db:
        nics: [{network: back, ip: 10.62.0.21}, {network: l2}]
    placement:
      anti_affinity: [[web, db]]
    """)


def rendered(**kw):
    """The renderer's documents and values for LAB, one host with a fence list."""
    bp = load_blueprint(LAB, "rt.yaml", "/tmp")
    plan = make_plan(bp, load_catalogue("local"))
    ap = resolve_app(bp, "rt", plan, plan_network(bp, "rt", {"front": 7, "back": 8, "l2": 9}).vni)
    sites = {h.name: HostSite(h.name, f"198.18.0.{i + 1}", "ul0", f"/run/rt/{h.name}", "/d", "tcg",
                              ("169.254.169.254/32",) if i == 0 else ())
             for i, h in enumerate(plan.placement.hosts)}
    return desired_docs(ap, sites, **kw), desired_states(ap, sites, **kw)


@pytest.mark.parametrize("kw", [{}, {"running": {"db": False},
                                     "incoming": {"web": "/s/web.state"}}])
def test_the_renderers_documents_come_back_byte_for_byte(kw):
    docs, states = rendered(**kw)
    assert len(docs) == 2 and any("router" in d for d in docs.values())
    for host, doc in docs.items():
        desired = parse_desired(doc)
        assert desired == states[host]
        assert json.dumps(to_doc(desired)) == json.dumps(doc)  # the keys' order too


def test_to_doc_leaves_out_what_the_renderer_leaves_out():
    vm = VM("x", True, ("qemu", "-daemonize", "/r/x.pid"), "/r/x.pid", "/r/x.qmp",
            (Disk("/d/x", size_mib=1),))
    assert to_doc(Desired("a", "/r", vms=(vm,))) == {
        "version": 1, "app": "a", "host": "", "run_dir": "/r", "networks": [], "taps": [],
        "vms": [{"name": "x", "running": True, "argv": ["qemu", "-daemonize", "/r/x.pid"],
                 "pidfile": "/r/x.pid", "qmp": "/r/x.qmp",
                 "disks": [{"path": "/d/x", "size_mib": 1}]}]}
    docs, _ = rendered()
    fenced, open_ = (to_doc(parse_desired(d))["underlay"] for d in docs.values())
    assert fenced["deny"] == ["169.254.169.254/32"] and "deny" not in open_


# -- generated documents: every valid one comes back -------------------------------------------

NAME = st.from_regex(r"[a-z][a-z0-9]{0,6}", fullmatch=True)
MAC = st.integers(0, 2**40 - 1).map(
    lambda n: ":".join(f"{b:02x}" for b in (0x52, *n.to_bytes(5, "big"))))  # unicast


def ips(family: int, net: str | None = None):
    if net is not None:
        n = ipaddress.ip_network(net)
        return st.integers(1, n.num_addresses - 2).map(lambda i: str(n.network_address + i))
    if family == 4:
        return st.integers(1, 2**24 - 2).map(lambda i: str(ipaddress.IPv4Address("10.0.0.0") + i))
    return st.integers(1, 2**64).map(lambda i: str(ipaddress.IPv6Address("fd00::") + i))


@st.composite
def documents(draw):
    """A valid document in the renderer's canonical form (what to_doc writes)."""
    run_dir = "/run/" + draw(NAME)
    family = draw(st.sampled_from([4, 6]))
    doc = {"version": 1, "app": draw(st.from_regex(r"[A-Za-z0-9_.-]{1,20}", fullmatch=True)),
           "host": draw(st.sampled_from(["", "host-1"])), "run_dir": run_dir}
    nets = draw(st.lists(st.integers(1, 0xFFFFFF), max_size=4, unique=True))
    underlay = None
    if nets or draw(st.booleans()):
        underlay = {"device": "ul0", "address": draw(ips(family))}
        if draw(st.booleans()):
            underlay["mtu"] = draw(st.integers(68, 65535))
        deny = draw(st.lists(ips(family), max_size=2, unique=True))
        if deny:
            underlay["deny"] = [str(ipaddress.ip_network(a)) for a in deny]
        doc["underlay"] = underlay
    doc["networks"] = [
        {"name": f"n{i}", "vni": vni, "bridge": f"rb{i}", "vxlan": f"rx{i}",
         "mtu": draw(st.integers(68, 9000)),
         "peers": draw(st.lists(ips(family), max_size=2, unique=True)),
         "fdb": [{"mac": m, "dst": draw(ips(family))}
                 for m in draw(st.lists(MAC, max_size=2, unique=True))]}
        for i, vni in enumerate(nets)]
    doc["taps"] = [{"name": f"rt{i}", "bridge": draw(st.sampled_from(doc["networks"]))["bridge"],
                    "mtu": 1500} for i in range(draw(st.integers(0, 2)) if nets else 0)]
    doc["vms"] = []
    for i in range(draw(st.integers(0, 2))):
        pid = f"{run_dir}/vm{i}.pid"
        formats = draw(st.lists(st.sampled_from([None, "qcow2", "vmdk", "raw"]), max_size=2))
        disks = [{"path": f"/d/vm{i}-{j}.qcow2", "base": "/img/b", "base_format": fmt} if fmt
                 else {"path": f"/d/vm{i}-{j}.qcow2", "size_mib": draw(st.integers(1, 10**6))}
                 for j, fmt in enumerate(formats)]
        vm = {"name": f"vm{i}", "running": draw(st.booleans()),
              "argv": ["qemu", *draw(st.lists(st.text(max_size=5).filter(lambda a: "\0" not in a),
                                              max_size=3)), "-daemonize", "-pidfile", pid],
              "pidfile": pid, "qmp": f"{run_dir}/vm{i}.qmp", "disks": disks}
        if draw(st.booleans()):
            vm["incoming"] = f"/s/vm{i}.state"
        doc["vms"].append(vm)
    if nets and draw(st.booleans()):
        doc["router"] = draw(routers(doc, underlay))
    return doc


@st.composite
def routers(draw, doc, underlay):
    interfaces, subnets = [], {}
    for k, net in enumerate(draw(st.lists(st.sampled_from(doc["networks"]), min_size=1,
                                          unique_by=lambda n: n["name"]))):
        gateway = draw(st.sampled_from([True, True, False]))
        subnets[net["name"]] = f"10.{k}.0.0/24"
        interfaces.append({
            "network": net["name"], "bridge": net["bridge"], "vxlan": net["vxlan"],
            "address": f"10.{k}.0.1/24", "mac": draw(MAC), "egress_mac": draw(MAC),
            "gateway": gateway, "dhcp": draw(st.booleans()), "dns": draw(st.booleans()),
            "nat": gateway and draw(st.booleans()), "mtu": 1500})
    gated = sorted(i["network"] for i in interfaces if i["gateway"])
    routes = sorted(draw(st.sets(st.sampled_from([(a, b) for a in gated for b in gated if a < b])))
                    if len(gated) > 1 else [])
    allow = []
    for a, b in routes:
        proto = draw(st.sampled_from(["tcp", "udp", "icmp", "any"]))
        ports = draw(st.lists(st.tuples(st.integers(1, 100), st.integers(100, 65535)), max_size=2))
        allow.append({"from": b, "to": a, "protocol": proto,
                      "ports": [list(p) for p in ports] if proto in ("tcp", "udp") else []})
    dhcp = [i["network"] for i in interfaces if i["dhcp"]]
    macs = draw(st.lists(MAC, min_size=len(dhcp), max_size=len(dhcp), unique=True))
    leases = [{"network": n, "mac": m, "ip": draw(ips(4, subnets[n])), "name": draw(NAME)}
              for n, m in zip(dhcp, macs, strict=True)]
    names = [{"name": draw(NAME), "ip": draw(ips(4))} for _ in range(draw(st.integers(0, 2)))]
    router = {"domain": draw(NAME) + ".lab", "interfaces": interfaces,
              "routes": [list(r) for r in routes], "allow": allow, "leases": leases, "names": names}
    if ":" not in underlay["address"]:
        ports = draw(st.lists(st.tuples(st.integers(1000, 65535), st.sampled_from(["tcp", "udp"])),
                              max_size=3, unique=True))
        guests = ips(4, subnets[interfaces[0]["network"]])
        expose = [{"vm": draw(NAME), "protocol": proto, "port": port, "to": draw(guests),
                   "to_port": draw(st.integers(1, 65535))}
                  for port, proto in ports if (port, proto) != (4789, "udp")]
        if expose:
            router["expose"] = expose
    return router


def noisy(draw, doc):
    """The same document as a sloppier writer might send it: what parse_desired normalizes."""
    doc = copy.deepcopy(doc)
    doc["run_dir"] += "/"
    for net in doc["networks"]:
        net["peers"] = net["peers"] * 2
        for e in net["fdb"]:
            e["mac"] = e["mac"].upper()
    for vm in doc["vms"]:
        if vm.pop("running") is False:
            vm["running"] = False  # true is the default
        for d in vm["disks"]:
            if d.get("base_format") == "qcow2" and draw(st.booleans()):
                del d["base_format"]  # qcow2 is the default
    if "router" in doc:
        doc["router"]["routes"] = [r[::-1] for r in doc["router"]["routes"] * 2]
        for rule in doc["router"]["allow"]:
            if rule["protocol"] == "any":
                del rule["protocol"]  # any is the default
    doc["_comment"] = "free"
    return doc


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_property_valid_documents_come_back(data):
    doc = data.draw(documents())
    desired = parse_desired(doc)
    assert to_doc(desired) == doc
    assert parse_desired(json.loads(json.dumps(to_doc(desired)))) == desired
    sloppy = parse_desired(noisy(data.draw, doc))
    assert sloppy == desired and to_doc(sloppy) == doc


# -- problems: named where the document has them ------------------------------------------------

def host_1():
    docs, _ = rendered()
    return copy.deepcopy(docs["host-1"])  # a VM with two disks, fdb entries, leases, expose


def twice(items, i=0):
    items.append(copy.deepcopy(items[i]))


def unreadable_first(items):
    items.insert(0, 7)  # an unreadable item: reported, dropped, and the rest keep their place


@pytest.mark.parametrize("change, expected", [
    (lambda d: d.update(underlay=[]), "underlay: must be an object"),
    (lambda d: d["vms"][0]["disks"][0].pop("base"),
     "vms[0].disks[0]: needs either base (an overlay) or size_mib (a blank disk)"),
    (lambda d: d["vms"][0]["disks"][1].update(size_mib=0),
     "vms[0].disks[1].size_mib: must be positive"),
    (lambda d: d["vms"][0].update(argv=[]), "vms[0].argv: must not be empty"),
    (lambda d: d["vms"][0].update(running=1), "vms[0].running: must be bool, got int"),
    (lambda d: d["networks"][0].update(vni=True), "networks[0].vni: must be an integer"),
    (lambda d: d["networks"][0].update(vni=0), "networks[0].vni: 0 is outside 1..16777215"),
    (lambda d: twice(d["networks"][1]["fdb"]),
     "networks[1].fdb[1].mac: '52:54:00:6d:b0:1f' is listed twice"),
    (lambda d: d["router"]["allow"][0].update(ports=[[5, 1]]),
     "router.allow[0].ports[0]: must be [low, high] with 1 <= low <= high <= 65535"),
    (lambda d: d["router"]["interfaces"][0].update(gateway=False),
     "router.interfaces[0].nat: needs gateway: true"),
    (lambda d: (unreadable_first(d["router"]["leases"]), twice(d["router"]["leases"], 1)),
     "router.leases[3].mac: '52:54:00:ef:7a:88' already has leases[1]"),
    (lambda d: (unreadable_first(d["router"]["expose"]),
                d["router"]["expose"][2].update(port=22, protocol="tcp")),
     "router.expose[2].port: 22/tcp is the host's own (SSH or VXLAN)"),
    (lambda d: (unreadable_first(d["router"]["routes"]),
                d["router"]["routes"].append(["back", "l2"])),
     "router.routes[2]: l2 has no gateway interface here"),
    (lambda d: (unreadable_first(d["vms"]), twice(d["vms"], 1)),
     "vms[2].name: 'web' is already used by vms[1]"),
    (lambda d: (unreadable_first(d["networks"]), d["networks"][3].update(vni=7)),
     "networks[3].vni: 7 is already used by networks[1]"),
])
def test_problems_name_their_place(change, expected):
    doc = host_1()
    change(doc)
    with pytest.raises(DesiredError) as info:
        parse_desired(doc)
    assert any(p.startswith(expected) for p in info.value.problems), info.value.problems
