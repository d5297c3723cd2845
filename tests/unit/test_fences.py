"""The fences between apps, pure parts: what the desired document carries (underlay.deny, the
peers), how the host runtime renders it into the app's inet table on every host (router or
not), and how that table is reconciled and removed."""

from __future__ import annotations

import copy
import ipaddress
import textwrap

import pytest

from ravel.host.desired import DesiredError, parse_desired
from ravel.host.facts import Facts
from ravel.host.netconf import fence, nft_ruleset, table_digests, wanted_tables
from ravel.host.reconcile import problems, teardown
from ravel.host.services import RouterFacts, router_actions
from ravel.model.resolve import load_blueprint
from ravel.plan.catalogue import load_catalogue
from ravel.plan.network import plan_network, underlay_address
from ravel.plan.plan import make_plan
from ravel.providers import local
from ravel.plan.app import resolve_app
from ravel.render.host_state import HostSite, desired_docs

DENY = ("198.18.0.0/16", "198.19.255.254/32")
L2 = textwrap.dedent("""\
    name: l2
    networks:
      lan: {subnet: 10.71.0.0/24}
      out: {subnet: 10.72.0.0/24, gateway: 10.72.0.1, nat: true}
    vms:
      a: {nics: [{network: lan, ip: 10.71.0.2}]}
      b: {nics: [{network: lan, ip: 10.71.0.3}]}
      c: {nics: [{network: out, ip: 10.72.0.2}]}
    placement:
      anti_affinity: [[a, b, c]]
    """)


def docs(deny=DENY):
    bp = load_blueprint(L2, "l2.yaml")
    plan = make_plan(bp, load_catalogue("local"))
    net = plan_network(bp, "l2", {"lan": 1100, "out": 1101})
    sites = {h.name: HostSite(h.name, f"198.18.0.{i + 5}", "ul0", f"/run/r/l2/{h.name}", f"/d/{h.name}",
                              "tcg", deny) for i, h in enumerate(plan.placement.hosts)}
    out = desired_docs(resolve_app(bp, "l2", plan, net.vni), sites)
    return plan, out


def host_of(vm: str, deny=DENY) -> dict:
    plan, out = docs(deny)
    return copy.deepcopy(out[plan.placement.vm_host[vm]])


def lines(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines()]


def test_the_document_carries_the_providers_deny_list_only_when_there_is_one():
    assert host_of("a")["underlay"]["deny"] == list(DENY)
    assert "deny" not in host_of("a", deny=())["underlay"]


def test_a_host_without_a_router_still_fences_its_tunnels():
    doc = host_of("a")
    assert "router" not in doc  # lan: a pure layer-2 network
    d = parse_desired(doc)
    assert set(wanted_tables(d)) == {"inet"}
    text = nft_ruleset(d)
    rules = lines(text)
    peer = d.networks[0].peers[0]
    assert f"elements = {{ {peer} }}" in rules  # VXLAN is welcome from the app's other host only
    assert 'iifname != "ul0" udp dport 4789 counter drop' in rules  # and through the underlay only
    assert "udp dport 4789 ip saddr != @peers counter drop" in rules
    assert f'iifname "{d.networks[0].bridge}" drop' in rules  # its guests reach nothing on the host
    # no forward chain: with br_netfilter, one would see (and could drop) the bridged frames
    assert not any("hook forward" in r for r in rules)
    # any bridge table left from an earlier router goes in the same transaction
    assert text.endswith("table bridge ravel-l2 {}\ndelete table bridge ravel-l2\n")


def test_nat_traffic_never_reaches_the_fence_which_holds_the_peers_and_the_deny_list():
    doc = host_of("c")
    doc["networks"][0]["peers"] = ["198.18.0.9", "203.0.113.7"]  # a peer outside the deny list
    d = parse_desired(doc)
    assert fence(d) == ["198.18.0.0/16", "198.19.255.254", "203.0.113.7"]  # collapsed, no overlap
    rules = lines(nft_ruleset(d))
    assert "elements = { 198.18.0.0/16, 198.19.255.254, 203.0.113.7 }" in rules
    forward = rules.index("type filter hook forward priority filter; policy drop;")
    # before anything is accepted, established flows included
    assert rules[forward + 1] == 'oifname "ul0" ip daddr @fence counter drop'
    assert 'iifname "rb1101" oifname "ul0" ip saddr 10.72.0.0/24 accept' in rules


def test_the_local_deny_list_holds_every_host_and_this_machine_but_not_the_outside_world():
    deny = [ipaddress.ip_network(n) for n in local.GUEST_DENY]
    for host_id in (1, 2, 4242, 65535):
        assert any(underlay_address(host_id) in n for n in deny)
    assert any(ipaddress.ip_address(local.ROOT_ADDRESS) in n for n in deny)
    # the e2e tests' "internet" (tests/e2e/test_network_services.py) stays reachable
    assert not any(ipaddress.ip_address("198.19.254.1") in n for n in deny)


@pytest.mark.parametrize("deny, expected", [
    (["10.0.0.1/8"], "underlay.deny[0]: '10.0.0.1/8' is not an address or network"),
    ([42], "underlay.deny[0]: 42 is not an address or network"),
    (["fd00::/8"], "underlay.deny[0]: fd00::/8 is not IPv4 like the underlay address"),
])
def test_a_bad_deny_list_is_located(deny, expected):
    doc = host_of("a")
    doc["underlay"]["deny"] = deny
    with pytest.raises(DesiredError) as info:
        parse_desired(doc)
    assert any(p.startswith(expected) for p in info.value.problems), info.value.problems


def test_the_fence_is_reconciled_like_the_rest_and_removed_on_destroy():
    d = parse_desired(host_of("a"))
    fresh = RouterFacts(app="l2", tools={"nft": True, "dnsmasq": False})
    steps = router_actions(d, fresh)
    assert [(s.kind, s.target, s.reason) for s in steps] == [("router.nft", "ravel-l2", "inet table missing")]
    done = RouterFacts(app="l2", tools=fresh.tools, tables=table_digests(d))
    assert router_actions(d, done) == []
    # a new peer changes what is let in
    doc = host_of("a")
    doc["networks"][0]["peers"] = ["198.18.0.99"]
    assert [s.reason for s in router_actions(parse_desired(doc), done)] == ["inet table out of date"]
    # nft is needed even without a router
    assert any("apt-get install nftables" in p
               for p in problems(d, Facts(run_dir=d.run_dir, router=RouterFacts(app="l2", tools={"nft": False}))))
    gone = teardown(Facts(run_dir=d.run_dir, router=done), d)
    assert gone[0].kind == "router.nft.delete" and gone[0].argv == (("nft", "delete", "table", "inet", "ravel-l2"),)


def test_a_host_without_networks_needs_no_table():
    doc = host_of("a")
    doc.update(networks=[], taps=[], vms=[])
    d = parse_desired(doc)
    assert wanted_tables(d) == {} and router_actions(d, RouterFacts(app="l2", tools={"nft": False})) == []
