"""Exposed services on a host's uplink (the cloud path, the same on every provider): which port
each service gets there (pure, in the plan), how the desired document carries it, how the host
runtime checks it, and the nft rules it becomes."""

from __future__ import annotations

import copy

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ravel.errors import BlueprintError
from ravel.host.desired import DesiredError, parse_desired
from ravel.host.netconf import nft_ruleset, table_digests
from ravel.model.resolve import load_blueprint
from ravel.plan.catalogue import load_catalogue
from ravel.plan.network import (
    HOST_PORT_FIRST,
    HOST_PORT_SPAN,
    RESERVED_HOST_PORTS,
    ServiceForward,
    host_side_ports,
    plan_network,
    service_forwards,
)
from ravel.plan.plan import make_plan
from ravel.plan.app import resolve_app
from ravel.render.host_state import HostSite, desired_docs

LAB = """\
name: ex
networks:
  lan: {subnet: 10.5.0.0/24, gateway: 10.5.0.1, dhcp: true}
  bare: {subnet: 10.6.0.0/24}
defaults: {cpus: 1, memory: 64MiB, boot: {kernel: /k, initrd: /i, cmdline: x}}
vms:
  web:
    nics: [{network: lan}]
    services: [{port: 80}, {port: 53, protocol: udp}, {port: 22}]
  db:
    nics: [{network: bare, ip: 10.6.0.7}]
    services: [{port: 80, allow: [203.0.113.0/24]}, {port: 5432, host_port: 15432}]
placement: {host_types: [local-small]}
"""


def docs(text: str = LAB) -> dict:
    bp = load_blueprint(text, "ex.yaml", "/tmp")
    plan = make_plan(bp, load_catalogue("local"))
    net = plan_network(bp, "ex", {"lan": 100, "bare": 101})
    sites = {h.name: HostSite(h.name, f"198.18.0.{i + 9}", "ul0", f"/run/ex/{h.name}", "/data/ex", "tcg")
             for i, h in enumerate(plan.placement.hosts)}
    return desired_docs(resolve_app(bp, "ex", plan, net.vni), sites)


def fw(vm: str, port: int, protocol: str = "tcp", host: str = "host-1", host_port: int | None = None) -> ServiceForward:
    return ServiceForward(vm, host, port, protocol, "10.0.0.5", host_port)


def test_host_side_ports_keep_the_guests_port_when_free():
    ports = host_side_ports((fw("a", 80), fw("b", 80), fw("b", 80, "udp"), fw("c", 80, host="host-2"),
                             fw("d", 22), fw("e", 4789, "udp"), fw("f", 443, host_port=80)))
    assert ports[("b", 80, "udp")] == 80  # another protocol: another port
    assert ports[("c", 80, "tcp")] == 80  # another host: its own uplink
    assert ports[("f", 443, "tcp")] == 80  # fixed ports win over guests' own
    for key in (("a", 80, "tcp"), ("b", 80, "tcp"), ("d", 22, "tcp"), ("e", 4789, "udp")):
        assert HOST_PORT_FIRST <= ports[key] < HOST_PORT_FIRST + HOST_PORT_SPAN  # taken or the host's own
    assert ports[("a", 80, "tcp")] != ports[("b", 80, "tcp")]


def test_a_service_added_later_moves_nobody():
    before = host_side_ports((fw("a", 80), fw("b", 80), fw("c", 8080)))
    after = host_side_ports((fw("a", 80), fw("b", 80), fw("c", 8080), fw("z", 80), fw("y", 8080)))
    assert all(after[k] == v for k, v in before.items())


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from("abcdef"), st.sampled_from([22, 53, 80, 443, 4789, 20000]),
                          st.sampled_from(["tcp", "udp"]), st.sampled_from(["host-1", "host-2"])),
                unique_by=lambda t: t[:3], max_size=20))
def test_property_host_ports_are_unique_per_host_and_never_the_hosts_own(items):
    forwards = tuple(fw(vm, port, proto, host) for vm, port, proto, host in items)
    ports = host_side_ports(forwards)
    assert ports == host_side_ports(forwards)  # deterministic
    seen = set()
    for f in forwards:
        key = (f.host, ports[(f.vm, f.port, f.protocol)], f.protocol)
        assert key not in seen and key[1:] not in RESERVED_HOST_PORTS
        seen.add(key)


def test_the_desired_document_carries_the_hosts_forwards():
    (doc,) = docs().values()
    assert doc["router"]["expose"] == [
        {"vm": "web", "protocol": "tcp", "port": 80, "to": doc["router"]["expose"][0]["to"], "to_port": 80},
        {"vm": "web", "protocol": "udp", "port": 53, "to": doc["router"]["expose"][0]["to"], "to_port": 53},
        {"vm": "web", "protocol": "tcp", "port": doc["router"]["expose"][2]["port"],
         "to": doc["router"]["expose"][0]["to"], "to_port": 22},
        {"vm": "db", "protocol": "tcp", "port": doc["router"]["expose"][3]["port"], "to": "10.6.0.7", "to_port": 80},
        {"vm": "db", "protocol": "tcp", "port": 15432, "to": "10.6.0.7", "to_port": 5432},
    ]
    assert doc["router"]["expose"][0]["to"].startswith("10.5.0.")
    assert parse_desired(doc).router.expose[4].to_port == 5432


def test_nft_dnats_only_the_declared_ports_on_the_underlay_address():
    (doc,) = docs().values()
    web = doc["router"]["expose"][0]["to"]
    ssh_port = doc["router"]["expose"][2]["port"]
    db80 = doc["router"]["expose"][3]["port"]
    text = nft_ruleset(parse_desired(doc))
    pre = text.split("chain prerouting {")[1].split("}")[0]
    assert "type nat hook prerouting priority dstnat; policy accept;" in pre
    assert [line.strip() for line in pre.splitlines()[2:] if line.strip()] == [
        f'iifname "ul0" ip daddr 198.18.0.9 tcp dport 80 dnat ip to {web}:80',
        f'iifname "ul0" ip daddr 198.18.0.9 udp dport 53 dnat ip to {web}:53',
        f'iifname "ul0" ip daddr 198.18.0.9 tcp dport {ssh_port} dnat ip to {web}:22',
        f'iifname "ul0" ip daddr 198.18.0.9 tcp dport {db80} dnat ip to 10.6.0.7:80',
        'iifname "ul0" ip daddr 198.18.0.9 tcp dport 15432 dnat ip to 10.6.0.7:5432',
    ]
    fwd = text.split("chain forward {")[1].split("}")[0].splitlines()
    rules = [line.strip() for line in fwd]
    # the fence still comes first; each forward accepts exactly one DNAT'd guest port
    assert rules.index('oifname "ul0" ip daddr @fence counter drop') < rules.index(
        f'iifname "ul0" ip daddr {web} tcp dport 80 ct status dnat accept')
    assert sum("ct status dnat accept" in r for r in rules) == 5
    # bare has no gateway: its guest answers the host's service address, which is SNAT'd
    post = text.split("chain postrouting {")[1].split("}")[0]
    assert "ip daddr 10.6.0.7 tcp dport 80 ct status dnat snat ip to 10.6.0.254" in post
    assert f"ip daddr {web}" not in post  # lan's guests route back through their gateway


def test_a_service_leaving_the_blueprint_changes_the_table():
    (with_services,) = docs().values()
    (without,) = docs(LAB.replace("    services: [{port: 80}, {port: 53, protocol: udp}, {port: 22}]\n", "")).values()
    assert table_digests(parse_desired(with_services)) != table_digests(parse_desired(without))
    assert [e["vm"] for e in without["router"]["expose"]] == ["db", "db"]


@pytest.mark.parametrize("change, expected", [
    (lambda e: e[0].update(port=22), "router.expose[0].port: 22/tcp is the host's own"),
    (lambda e: e[1].update(port=4789), "router.expose[1].port: 4789/udp is the host's own"),
    (lambda e: e[1].update(port=80, protocol="tcp"), "router.expose[1].port: 80/tcp is already exposed"),
    (lambda e: e[0].update(to="192.0.2.1"), "router.expose[0].to: 192.0.2.1 is in no subnet"),
    (lambda e: e[0].update(to_port=70000), "router.expose[0].to_port: 70000 is outside 1..65535"),
    (lambda e: e[0].update(protocol="sctp"), "router.expose[0].protocol: 'sctp' is not tcp or udp"),
    (lambda e: e[0].update(extra=1), "router.expose[0].extra: unknown key"),
])
def test_bad_expose_entries_are_named(change, expected):
    (doc,) = docs().values()
    doc = copy.deepcopy(doc)
    change(doc["router"]["expose"])
    with pytest.raises(DesiredError) as exc:
        parse_desired(doc)
    assert any(p.startswith(expected) for p in exc.value.problems), exc.value.problems


@pytest.mark.parametrize("port, protocol, what", [(22, "tcp", "SSH"), (4789, "udp", "VXLAN tunnels")])
def test_a_fixed_host_port_the_hosts_need_is_a_blueprint_error(port, protocol, what):
    text = LAB.replace("{port: 5432, host_port: 15432}", f"{{port: 5432, protocol: {protocol}, host_port: {port}}}")
    with pytest.raises(BlueprintError) as exc:
        load_blueprint(text, "ex.yaml", "/tmp")
    assert any(f"vms.db.services[1].host_port: host port {port}/{protocol} is the hosts' own ({what})" in line
               for line in exc.value.lines()), exc.value.lines()


def test_forwards_carry_the_allow_list_and_default_to_none():
    bp = load_blueprint(LAB, "ex.yaml", "/tmp")
    plan = make_plan(bp, load_catalogue("local"))
    forwards = {(f.vm, f.port): f for f in service_forwards(bp, plan.placement, plan_network(bp, "ex", {"lan": 1, "bare": 2}))}
    assert forwards[("web", 80)].allow == ()  # the user's address on clouds
    assert forwards[("db", 80)].allow == ("203.0.113.0/24",)
