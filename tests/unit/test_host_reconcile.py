"""The host runtime's pure core: desired state + observed facts -> the minimal actions."""

from __future__ import annotations

import copy
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ravel.host.desired import DesiredError, parse_desired, parse_target
from ravel.host.facts import (
    Facts, Link, Owned, OwnedVM, VMFact, VMRecord, argv_sha256, fdb_wanted, parse_addresses,
    parse_fdb, parse_links,
)
from ravel.host.netconf import table_digests
from ravel.host.reconcile import KINDS, phase, problems, reconcile, teardown
from ravel.host.services import RouterFacts

RUN = "/var/lib/ravel/demo"


def qemu_argv(name: str, mem: str = "64") -> list:
    return ["qemu-system-x86_64", "-M", "q35", "-m", mem, "-display", "none", "-daemonize",
            "-pidfile", f"{RUN}/{name}.pid", "-qmp", f"unix:{RUN}/{name}.qmp,server=on,wait=off",
            "-netdev", "tap,id=n0,ifname=rt1a0,script=no,downscript=no"]


DOC = {
    "version": 1, "app": "demo", "host": "host-1", "run_dir": RUN,
    "underlay": {"device": "eth0", "address": "198.18.0.11", "mtu": 1550},
    "networks": [
        {"name": "lan", "vni": 1001, "bridge": "rb1001", "vxlan": "rx1001", "mtu": 1500,
         "peers": ["198.18.0.12", "198.18.0.13"],
         "fdb": [{"mac": "52:54:00:12:34:56", "dst": "198.18.0.12"}]},
        {"name": "mgmt", "vni": 1002, "bridge": "rb1002", "vxlan": "rx1002", "mtu": 1500,
         "peers": ["198.18.0.12"], "fdb": []},
    ],
    "taps": [{"name": "rt1a0", "bridge": "rb1001", "mtu": 1500}],
    "vms": [
        {"name": "web-1", "running": True, "argv": qemu_argv("web-1"),
         "pidfile": f"{RUN}/web-1.pid", "qmp": f"{RUN}/web-1.qmp",
         "disks": [{"path": f"{RUN}/web-1-disk0.qcow2", "base": "/images/base.qcow2",
                    "base_format": "qcow2"},
                   {"path": f"{RUN}/web-1-disk1.qcow2", "size_mib": 1024}]},
    ],
}


def doc(**changes) -> dict:
    d = copy.deepcopy(DOC)
    d.update(changes)
    return d


def converged(desired, running=True, **overrides) -> Facts:
    """Facts of a host that is exactly in ``desired`` (what a perfect apply leaves behind)."""
    links = {"eth0": Link("eth0", "veth", 1550, True)}
    fdb = {}
    for n in desired.networks:
        links[n.bridge] = Link(n.bridge, "bridge", n.mtu, True, mcast_snooping=0)
        links[n.vxlan] = Link(n.vxlan, "vxlan", n.mtu, True, master=n.bridge, vni=n.vni,
                              local=desired.underlay.address, port=4789, learning=False)
        fdb[n.vxlan] = fdb_wanted(n.peers, n.fdb)
    for t in desired.taps:
        links[t.name] = Link(t.name, "tap", t.mtu, True, master=t.bridge)
    vms = {}
    for i, vm in enumerate(desired.vms):
        rec = VMRecord(argv_sha256(vm.argv), vm.argv, vm.pidfile, vm.qmp)
        up = running and vm.running
        vms[vm.name] = VMFact(vm.name, vm.pidfile, vm.qmp, pid=1000 + i if up else None,
                              running=up, starttime=5 if up else None, record=rec, argv=vm.argv,
                              files=(vm.pidfile, vm.qmp) if up else ())
    paths = {d.path: True for vm in desired.vms for d in vm.disks}
    paths.update({d.base: True for vm in desired.vms for d in vm.disks if d.base})
    owned = Owned(links=desired.link_kinds(), vms={
        vm.name: OwnedVM(vm.pidfile, vm.qmp, tuple(d.path for d in vm.disks))
        for vm in desired.vms})
    # every host with networks has the app's inet table (the fence around its tunnels)
    router = RouterFacts(app=desired.app, tools={"nft": True, "dnsmasq": True}, tables=table_digests(desired))
    facts = dict(run_dir=desired.run_dir, run_dir_exists=True, run_dir_mode=0o700, links=links,
                 fdb=fdb, owned=owned, vms=vms, paths=paths, router=router)
    facts.update(overrides)
    return Facts(**facts)


def kinds(actions):
    return [(a.kind, a.target) for a in actions]


# -- no-op and from scratch ---------------------------------------------------------------------

def test_converged_host_needs_no_action():
    d = parse_desired(DOC)
    assert reconcile(d, converged(d)) == []
    assert problems(d, converged(d)) == []


def test_empty_host_gets_everything_in_order():
    d = parse_desired(DOC)
    facts = Facts(run_dir=RUN, links={"eth0": Link("eth0", "veth", 1500, True)},
                  paths={"/images/base.qcow2": True})
    actions = reconcile(d, facts)
    assert kinds(actions) == [
        ("run_dir.create", RUN),
        ("underlay.mtu", "eth0"),
        ("bridge.create", "rb1001"), ("bridge.create", "rb1002"),
        ("vxlan.create", "rx1001"), ("vxlan.create", "rx1002"),
        ("fdb.add", "rx1001 00:00:00:00:00:00 -> 198.18.0.12"),
        ("fdb.add", "rx1001 00:00:00:00:00:00 -> 198.18.0.13"),
        ("fdb.add", "rx1001 52:54:00:12:34:56 -> 198.18.0.12"),
        ("fdb.add", "rx1002 00:00:00:00:00:00 -> 198.18.0.12"),
        ("tap.create", "rt1a0"),
        ("router.nft", "ravel-demo"),
        ("disk.create", f"{RUN}/web-1-disk0.qcow2"), ("disk.create", f"{RUN}/web-1-disk1.qcow2"),
        ("vm.start", "web-1"),
    ]
    # the plan follows the documented order
    order = [phase(a.kind) for a in actions]
    assert order == sorted(order)
    by = {a.target: a for a in actions}
    assert by["rb1001"].argv[0] == ("ip", "link", "add", "rb1001", "type", "bridge",
                                    "mcast_snooping", "0")
    assert by["rx1001"].argv == (
        ("ip", "link", "add", "rx1001", "type", "vxlan", "id", "1001", "local", "198.18.0.11",
         "dstport", "4789", "nolearning"),
        ("ip", "link", "set", "dev", "rx1001", "mtu", "1500"),
        ("ip", "link", "set", "dev", "rx1001", "master", "rb1001"),
        ("ip", "link", "set", "dev", "rx1001", "up"),
    )
    assert by["rx1001 00:00:00:00:00:00 -> 198.18.0.13"].argv == (
        ("bridge", "fdb", "append", "00:00:00:00:00:00", "dev", "rx1001", "dst", "198.18.0.13"),)
    assert by["rx1001 52:54:00:12:34:56 -> 198.18.0.12"].argv == (
        ("bridge", "fdb", "replace", "52:54:00:12:34:56", "dev", "rx1001", "dst", "198.18.0.12",
         "static"),)
    assert by["rt1a0"].argv[0] == ("ip", "tuntap", "add", "dev", "rt1a0", "mode", "tap")
    assert by[f"{RUN}/web-1-disk0.qcow2"].argv == (
        ("qemu-img", "create", "-f", "qcow2", "-b", "/images/base.qcow2", "-F", "qcow2",
         f"{RUN}/web-1-disk0.qcow2"),)
    assert by[f"{RUN}/web-1-disk1.qcow2"].argv == (
        ("qemu-img", "create", "-f", "qcow2", f"{RUN}/web-1-disk1.qcow2", "1024M"),)
    start = by["web-1"]
    assert start.params["argv"] == qemu_argv("web-1")
    assert start.params["record"] == f"{RUN}/web-1.argv"
    assert start.params["sha256"] == argv_sha256(qemu_argv("web-1"))


def test_every_action_has_a_reason():
    d = parse_desired(DOC)
    for a in reconcile(d, Facts(run_dir=RUN, links={"eth0": Link("eth0", "", 1500, True)})):
        assert a.reason and a.kind in KINDS


# -- changes -------------------------------------------------------------------------------------

def test_changed_vni_recreates_vxlan_and_its_fdb():
    old = parse_desired(DOC)
    new_doc = doc()
    new_doc["networks"][0]["vni"] = 2001
    new = parse_desired(new_doc)
    actions = reconcile(new, converged(old))
    assert kinds(actions) == [
        ("vxlan.recreate", "rx1001"),
        ("fdb.add", "rx1001 00:00:00:00:00:00 -> 198.18.0.12"),
        ("fdb.add", "rx1001 00:00:00:00:00:00 -> 198.18.0.13"),
        ("fdb.add", "rx1001 52:54:00:12:34:56 -> 198.18.0.12"),
    ]
    assert actions[0].reason == "vni 1001, want 2001"
    assert actions[0].argv[0] == ("ip", "link", "del", "dev", "rx1001")
    assert "2001" in actions[0].argv[1]


def test_changed_local_address_or_learning_recreates_vxlan():
    d = parse_desired(DOC)
    facts = converged(d)
    links = dict(facts.links)
    links["rx1002"] = Link("rx1002", "vxlan", 1500, True, master="rb1002", vni=1002,
                           local="198.18.0.99", port=4789, learning=True)
    actions = reconcile(d, converged(d, links=links))
    assert actions[0].kind == "vxlan.recreate"
    assert actions[0].reason == "local 198.18.0.99, want 198.18.0.11; learning on"


def test_removed_network_deletes_its_owned_devices():
    old = parse_desired(DOC)
    new_doc = doc()
    del new_doc["networks"][1]
    new = parse_desired(new_doc)
    actions = reconcile(new, converged(old))
    # the app's table drops the bridge's input rule with it
    assert kinds(actions) == [("bridge.delete", "rb1002"), ("vxlan.delete", "rx1002"),
                              ("router.nft", "ravel-demo")]
    assert all(a.reason == "no longer desired" for a in actions[:2])
    assert actions[0].argv == (("ip", "link", "del", "dev", "rb1002"),)


def test_devices_not_in_owned_json_are_never_deleted():
    old = parse_desired(DOC)
    new = parse_desired(doc(networks=[DOC["networks"][0]]))
    facts = converged(old, owned=Owned(links={"rb1001": "bridge", "rx1001": "vxlan",
                                              "rt1a0": "tap"}), router=converged(new).router)
    assert reconcile(new, facts) == []


def test_changed_argv_restarts_the_vm():
    old = parse_desired(DOC)
    new_doc = doc()
    new_doc["vms"][0]["argv"] = qemu_argv("web-1", mem="128")
    actions = reconcile(parse_desired(new_doc), converged(old))
    assert [(a.kind, a.target, a.reason) for a in actions] == [
        ("vm.stop", "web-1", "configuration changed"),
        ("vm.start", "web-1", "configuration changed"),
    ]
    stop, start = actions
    assert stop.params["pid"] == 1000 and stop.params["argv"] == qemu_argv("web-1")
    assert start.params["argv"] == qemu_argv("web-1", mem="128")


def test_running_false_stops_and_stopped_vm_stays_stopped():
    d = parse_desired(DOC)
    stopped = doc()
    stopped["vms"][0]["running"] = False
    actions = reconcile(parse_desired(stopped), converged(d))
    assert [(a.kind, a.reason) for a in actions] == [("vm.stop", "running=false")]
    assert actions[0].params["qmp"] == f"{RUN}/web-1.qmp"
    assert reconcile(parse_desired(stopped), converged(d, running=False)) == []


def test_dead_or_reused_pid_means_start_again():
    d = parse_desired(DOC)
    facts = converged(d)
    vms = {"web-1": VMFact("web-1", f"{RUN}/web-1.pid", f"{RUN}/web-1.qmp", pid=4242,
                           running=False, note="pidfile names pid 4242, which is not this VM")}
    actions = reconcile(d, converged(d, vms=vms))
    assert [(a.kind, a.reason) for a in actions] == [
        ("vm.start", "not running; pidfile names pid 4242, which is not this VM")]
    assert facts.vms["web-1"].running


def test_vm_removed_from_desired_is_stopped_and_its_files_deleted():
    d = parse_desired(DOC)
    actions = reconcile(parse_desired(doc(vms=[])), converged(d))
    assert [(a.kind, a.target) for a in actions] == [("vm.stop", "web-1"), ("vm.remove", "web-1")]
    assert actions[1].params["files"] == sorted([
        f"{RUN}/web-1.pid", f"{RUN}/web-1.qmp", f"{RUN}/web-1.argv", f"{RUN}/web-1.exit",
        f"{RUN}/web-1-disk0.qcow2", f"{RUN}/web-1-disk1.qcow2"])  # .exit: written as the stop ends QEMU


def test_fdb_stale_entries_removed_before_new_ones_added():
    old = parse_desired(DOC)
    new_doc = doc()
    new_doc["networks"][0]["peers"] = ["198.18.0.12", "198.18.0.14"]
    new_doc["networks"][0]["fdb"] = [{"mac": "52:54:00:12:34:56", "dst": "198.18.0.14"}]
    actions = reconcile(parse_desired(new_doc), converged(old))
    assert [(a.kind, a.target) for a in actions] == [
        ("fdb.delete", "rx1001 00:00:00:00:00:00 -> 198.18.0.13"),
        ("fdb.delete", "rx1001 52:54:00:12:34:56 -> 198.18.0.12"),
        ("fdb.add", "rx1001 00:00:00:00:00:00 -> 198.18.0.14"),
        ("fdb.add", "rx1001 52:54:00:12:34:56 -> 198.18.0.14"),
        ("router.nft", "ravel-demo"),  # VXLAN is accepted from the new peer, no longer the old
    ]
    assert actions[0].argv == (("bridge", "fdb", "del", "00:00:00:00:00:00", "dev", "rx1001",
                                "dst", "198.18.0.13"),)


def test_underlay_mtu_is_raised_never_lowered():
    d = parse_desired(DOC)
    low = converged(d, links={**converged(d).links, "eth0": Link("eth0", "veth", 1500, True)})
    assert [(a.kind, a.argv) for a in reconcile(d, low)] == [
        ("underlay.mtu", (("ip", "link", "set", "dev", "eth0", "mtu", "1550"),))]
    high = converged(d, links={**converged(d).links, "eth0": Link("eth0", "veth", 9000, True)})
    assert reconcile(d, high) == []


def test_mtu_master_and_state_drift_are_updated_in_place():
    d = parse_desired(DOC)
    links = dict(converged(d).links)
    links["rb1001"] = Link("rb1001", "bridge", 1450, False, mcast_snooping=1)
    links["rt1a0"] = Link("rt1a0", "tap", 1500, True, master=None)
    actions = reconcile(d, converged(d, links=links))
    assert [(a.kind, a.reason) for a in actions] == [
        ("bridge.update", "multicast snooping on; mtu 1450, want 1500; down"),
        ("tap.update", "master none, want rb1001"),
    ]


def test_recreated_bridge_reattaches_ports_and_recreated_tap_restarts_its_vm():
    d = parse_desired(DOC)
    links = dict(converged(d).links)
    links["rb1001"] = Link("rb1001", "vxlan", 1500, True)  # wrong kind, but ours
    links["rt1a0"] = Link("rt1a0", "veth", 1500, True)
    actions = reconcile(d, converged(d, links=links))
    assert [(a.kind, a.target, a.reason) for a in actions] == [
        ("bridge.recreate", "rb1001", "is a vxlan device, want bridge"),
        ("vxlan.update", "rx1001", "bridge rb1001 was (re)created"),
        ("tap.recreate", "rt1a0", "is a veth device, want tap"),
        ("vm.stop", "web-1", "tap rt1a0 was (re)created"),
        ("vm.start", "web-1", "tap rt1a0 was (re)created"),
    ]


def test_foreign_device_of_the_wrong_kind_is_a_problem_not_an_action():
    d = parse_desired(DOC)
    links = dict(converged(d).links)
    links["rb1001"] = Link("rb1001", "veth", 1500, True)
    facts = converged(d, links=links, owned=Owned())
    assert problems(d, facts) == [
        "'rb1001' exists as a veth device that app 'demo' did not create; refusing to replace "
        "it with a bridge"]
    assert all(a.target != "rb1001" for a in reconcile(d, facts))


def test_existing_disks_are_never_recreated_and_missing_base_is_a_problem():
    d = parse_desired(DOC)
    facts = converged(d, paths={f"{RUN}/web-1-disk0.qcow2": False,
                                f"{RUN}/web-1-disk1.qcow2": True, "/images/base.qcow2": False})
    assert problems(d, facts) == [
        f"VM 'web-1': base image /images/base.qcow2 of disk {RUN}/web-1-disk0.qcow2 not found"]
    assert kinds(reconcile(d, facts)) == [("disk.create", f"{RUN}/web-1-disk0.qcow2")]


def test_missing_underlay_device_is_a_problem():
    d = parse_desired(DOC)
    links = dict(converged(d).links)
    del links["eth0"]
    assert problems(d, converged(d, links=links)) == [
        "underlay device 'eth0' does not exist on this host"]


def test_underlay_address_must_be_on_the_device():
    d = parse_desired(DOC)
    assert problems(d, converged(d, underlay_addresses=("198.18.0.11", "fe80::1"))) == []
    assert problems(d, converged(d, underlay_addresses=("198.18.0.99",))) == [
        "underlay address 198.18.0.11 is not assigned to 'eth0' (it has 198.18.0.99)"]


def test_run_dir_mode_is_fixed():
    d = parse_desired(DOC)
    actions = reconcile(d, converged(d, run_dir_mode=0o755))
    assert [(a.kind, a.reason) for a in actions] == [("run_dir.chmod", "mode 0o755, want 0o700")]


# -- teardown ------------------------------------------------------------------------------------

def test_teardown_removes_everything_then_nothing():
    d = parse_desired(DOC)
    facts = converged(d)
    actions = teardown(facts)
    assert kinds(actions) == [
        ("router.nft.delete", "ravel-demo"),
        ("vm.stop", "web-1"), ("vm.remove", "web-1"),
        ("link.delete", "rt1a0"), ("link.delete", "rx1001"), ("link.delete", "rx1002"),
        ("link.delete", "rb1001"), ("link.delete", "rb1002"),
        ("run_dir.delete", RUN),
    ]
    gone = Facts(run_dir=RUN, links={"eth0": Link("eth0", "veth", 1550, True)})
    assert teardown(gone) == []


def test_teardown_prefixes_never_touch_the_underlay_or_physical_devices():
    links = {"eth0": Link("eth0", "", 1500, True), "rvx1": Link("rvx1", "veth", 1500, True),
             "rvphys": Link("rvphys", "", 1500, True), "lo": Link("lo", "", 65536, True)}
    facts = Facts(run_dir=RUN, links=links)
    assert kinds(teardown(facts, prefixes=("rv",))) == [("link.delete", "rvx1")]


# -- parsing -----------------------------------------------------------------------------------

IP_LINK_JSON = json.dumps([
    {"ifname": "lo", "flags": ["LOOPBACK"], "mtu": 65536},
    {"ifname": "rb1", "flags": ["BROADCAST", "MULTICAST", "UP"], "mtu": 1500,
     "linkinfo": {"info_kind": "bridge", "info_data": {"mcast_snooping": 0}}},
    {"ifname": "rx1", "flags": ["UP", "LOWER_UP"], "mtu": 1500, "master": "rb1",
     "linkinfo": {"info_kind": "vxlan", "info_data": {"id": 1001, "local": "198.18.0.11",
                                                     "port": 4789, "learning": False}}},
    {"ifname": "rt1", "flags": ["NO-CARRIER", "UP"], "mtu": 1500, "master": "rb1",
     "linkinfo": {"info_kind": "tun", "info_data": {"type": "tap", "persist": True}}},
])

FDB_JSON = json.dumps([
    {"mac": "d2:66:78:c7:f7:cf", "flags": [], "master": "rb1", "state": "permanent"},
    {"mac": "52:54:00:12:34:56", "dst": "198.18.0.12", "flags": ["self"], "state": "static"},
    {"mac": "00:00:00:00:00:00", "dst": "198.18.0.12", "flags": ["self"], "state": "permanent"},
])


def test_parse_links_and_fdb():
    links = parse_links(IP_LINK_JSON)
    assert links["lo"].kind == "" and not links["lo"].up
    assert links["rb1"] == Link("rb1", "bridge", 1500, True, mcast_snooping=0)
    assert links["rx1"] == Link("rx1", "vxlan", 1500, True, master="rb1", vni=1001,
                                local="198.18.0.11", port=4789, learning=False)
    assert links["rt1"].kind == "tap" and links["rt1"].master == "rb1"
    assert parse_addresses(json.dumps([{"ifname": "eth0", "addr_info": [
        {"family": "inet", "local": "198.18.0.11"}, {"family": "inet6", "local": "fe80::1"}]}])
    ) == ("198.18.0.11", "fe80::1")
    assert parse_fdb(FDB_JSON) == {("52:54:00:12:34:56", "198.18.0.12"),
                                   ("00:00:00:00:00:00", "198.18.0.12")}


def test_invalid_document_lists_every_problem():
    bad = doc(version=2)
    bad["networks"][0]["vni"] = 0x1000000
    bad["networks"][1]["bridge"] = "a-very-long-bridge-name"
    bad["taps"][0]["bridge"] = "nope"
    bad["vms"][0]["argv"] = ["qemu-system-x86_64"]
    bad["networks"][1]["peers"] = ["2001:db8::1"]
    bad["networks"][1]["peer"] = ["198.18.0.12"]  # typo
    bad["_comment"] = "free"
    with pytest.raises(DesiredError) as exc:
        parse_desired(bad)
    text = "\n".join(exc.value.problems)
    assert "_comment" not in text
    for needle in ("version: unsupported version 2", "networks[0].vni: 16777216 is outside",
                   "networks[1].bridge: 'a-very-long-bridge-name' is not a valid interface",
                   "taps[0].bridge: 'nope' is not the bridge", "must include -daemonize",
                   "must pass the pidfile", "networks[1]: 2001:db8::1 is not IPv4",
                   "networks[1].peer: unknown key (known: bridge, fdb, mtu, name, peers, vni, "
                   "vxlan)"):
        assert needle in text


def test_destroy_target_accepts_short_form_and_full_document():
    assert parse_target({"app": "demo", "run_dir": RUN + "/"}) == ("demo", RUN, (), None)
    app, run_dir, prefixes, desired = parse_target(doc(prefixes=["rvt1-"]))
    assert (app, run_dir, prefixes, desired.app) == ("demo", RUN, ("rvt1-",), "demo")
    with pytest.raises(DesiredError):
        parse_target({"app": "demo", "run_dir": "/"})
    with pytest.raises(DesiredError):
        parse_target({"app": "demo", "run_dir": RUN, "prefixes": [""]})


# -- property: whatever the desired state, a converged host needs nothing -------------------------

_names = st.integers(min_value=1, max_value=999)


@st.composite
def desired_docs(draw):
    vnis = draw(st.lists(st.integers(1, 0xFFFFFF), min_size=0, max_size=4, unique=True))
    peers = st.lists(st.integers(2, 250).map(lambda i: f"198.18.1.{i}"), max_size=3, unique=True)
    nets = []
    for i, vni in enumerate(vnis):
        macs = draw(st.lists(st.integers(0, 0xFFFF), max_size=3, unique=True))
        nets.append({"name": f"n{i}", "vni": vni, "bridge": f"rb{i}", "vxlan": f"rx{i}",
                     "mtu": draw(st.sampled_from([1400, 1500, 9000])), "peers": draw(peers),
                     "fdb": [{"mac": f"52:54:00:00:{m >> 8:02x}:{m & 0xFF:02x}",
                              "dst": "198.18.0.12"} for m in macs]})
    taps = [{"name": f"rt{i}", "bridge": n["bridge"]} for i, n in enumerate(nets)]
    vms = [{"name": f"vm{i}", "running": draw(st.booleans()), "argv": qemu_argv(f"vm{i}"),
            "pidfile": f"{RUN}/vm{i}.pid", "qmp": f"{RUN}/vm{i}.qmp",
            "disks": [{"path": f"{RUN}/vm{i}.qcow2", "size_mib": 8}]}
           for i in range(draw(st.integers(0, 3)))]
    return doc(networks=nets, taps=taps, vms=vms)


@settings(max_examples=60, deadline=None)
@given(desired_docs(), desired_docs())
def test_property_converged_is_noop_and_plans_are_ordered(old_doc, new_doc):
    new = parse_desired(new_doc)
    assert reconcile(new, converged(new)) == []
    actions = reconcile(new, converged(parse_desired(old_doc)))
    order = [phase(a.kind) for a in actions]
    assert order == sorted(order)
    targets = [(a.kind, a.target) for a in actions]
    assert len(targets) == len(set(targets))
