"""Network services, pure parts: blueprint keys, the address/routing plan, the host's router
section, the nftables and dnsmasq text, and the reconcile of a host's services."""

from __future__ import annotations

import copy
import json
import textwrap
from ipaddress import IPv4Address, IPv4Network

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ravel.errors import BlueprintError
from ravel.host.desired import DesiredError, parse_desired
from ravel.host.netconf import dnsmasq_argv, nft_ruleset, table_digests, table_name, wanted_sysctls
from ravel.host.reconcile import KINDS, phase, reconcile, teardown
from ravel.host.services import (
    BridgeFact, DnsmasqFact, RouterFacts, parse_bridge_addresses, parse_table_comment,
    router_actions, router_teardown,
)
from ravel.model.resolve import load_blueprint
from ravel.model.spec import json_schema
from ravel.plan.catalogue import load_catalogue
from ravel.plan.network import (
    assign_ip, gateway_mac, hosts_on_network, plan_network, service_forwards,
)
from ravel.plan.plan import make_plan
from ravel.plan.app import resolve_app
from ravel.render.host_state import HostSite, desired_docs
from ravel.render.qemu import guest_cmdline

LAB = textwrap.dedent("""\
    name: lab
    networks:
      front: {subnet: 10.61.0.0/24, gateway: 10.61.0.1, dhcp: true, dns: true, nat: true}
      back: {subnet: 10.62.0.0/24, gateway: 10.62.0.1, dhcp: true, dns: true}
      lan: {subnet: 10.63.0.0/24, gateway: 10.63.0.1}
      l2: {subnet: 10.64.0.0/24}
    routing:
      deny: [[front, lan]]
    firewall:
      allow:
        - {from: back, to: front, protocol: tcp, ports: [8080, "9000-9010"]}
    vms:
      web-1:
        nics: [{network: front}, {network: l2}]
        services: [{port: 8080}, {port: 9090, host_port: 47611}]
      db:
        nics: [{network: back, ip: 10.62.0.21}]
      srv:
        nics: [{network: lan, ip: 10.63.0.2}]
      cli:
        nics: [{network: lan}, {network: l2}]
    placement:
      anti_affinity: [[web-1, db, srv]]
    """)
VNIS = {"front": 1000, "back": 1001, "lan": 1002, "l2": 1003}


def lab(text: str = LAB, vnis=VNIS):
    bp = load_blueprint(text, "lab.yaml")
    plan = make_plan(bp, load_catalogue("local"))
    net = plan_network(bp, "lab", vnis)
    sites = {h.name: HostSite(h.name, f"198.18.0.{i + 1}", "ul0", f"/run/r/lab/{h.name}",
                              f"/d/{h.name}", "tcg") for i, h in enumerate(plan.placement.hosts)}
    return bp, plan, net, desired_docs(resolve_app(bp, "lab", plan, net.vni), sites)


def problems(text: str) -> list[str]:
    with pytest.raises(BlueprintError) as info:
        load_blueprint(textwrap.dedent(text), "bp.yaml")
    return info.value.lines()


# -- blueprint -------------------------------------------------------------------------------

def test_new_keys_resolve():
    bp = load_blueprint(LAB, "lab.yaml")
    assert bp.network("front").nat and not bp.network("back").nat
    assert bp.routing_deny == (("front", "lan"),)
    (rule,) = bp.firewall
    assert (rule.src, rule.dst, rule.protocol, rule.ports) == ("back", "front", "tcp", ((8080, 8080), (9000, 9010)))
    s = bp.vm("web-1").services
    assert (s[0].host_port, s[1].host_port) == (None, 47611)
    assert s[0].allow == ()  # not given: the user's address on clouds, never the world


def test_counted_host_port_counts_up():
    bp = load_blueprint("name: a\nnetworks: {n: {subnet: 10.0.0.0/24, dhcp: true}}\n"
                        "vms:\n  w: {count: 3, nics: [{network: n}], services: [{port: 80, host_port: 8000}]}\n", "a")
    assert [vm.services[0].host_port for vm in bp.vms] == [8000, 8001, 8002]


@pytest.mark.parametrize("text, expected", [
    ("""\
     name: a
     networks: {n: {subnet: 10.0.0.0/24, nat: true}}
     vms: {x: {}}
     """, "bp.yaml:2:42: networks.n.nat: nat needs a `gateway`"),
    ("""\
     name: a
     networks: {n: {subnet: 10.0.0.0/24}}
     routing: {deny: [[n, m]]}
     vms: {x: {}}
     """, "bp.yaml:3:22: routing.deny[0][1]: network 'm' is not defined"),
    ("""\
     name: a
     networks: {n: {subnet: 10.0.0.0/24}}
     routing: {deny: [[n, n]]}
     vms: {x: {}}
     """, "routing.deny[0]: network 'n' is paired with itself"),
    ("""\
     name: a
     networks: {n: {subnet: 10.0.0.0/24, gateway: 10.0.0.1}, m: {subnet: 10.1.0.0/24}}
     firewall: {allow: [{from: n, to: m}]}
     vms: {x: {}}
     """, "firewall.allow[0].to: network 'm' has no gateway, so nothing is routed to or from it"),
    ("""\
     name: a
     networks: {n: {subnet: 10.0.0.0/24, gateway: 10.0.0.1}, m: {subnet: 10.1.0.0/24, gateway: 10.1.0.1}}
     routing: {deny: [[m, n]]}
     firewall: {allow: [{from: n, to: m}]}
     vms: {x: {}}
     """, "firewall.allow[0]: routing between 'n' and 'm' is off (routing.deny)"),
    ("""\
     name: a
     networks: {n: {subnet: 10.0.0.0/24, gateway: 10.0.0.1}, m: {subnet: 10.1.0.0/24, gateway: 10.1.0.1}}
     firewall: {allow: [{from: n, to: m, protocol: icmp, ports: [1]}]}
     vms: {x: {}}
     """, "firewall.allow[0].ports: ports need protocol tcp or udp, not icmp"),
    ("""\
     name: a
     networks: {n: {subnet: 10.0.0.0/24, gateway: 10.0.0.1}, m: {subnet: 10.1.0.0/24, gateway: 10.1.0.1}}
     firewall: {allow: [{from: n, to: m, protocol: tcp, ports: ["90-80"]}]}
     vms: {x: {}}
     """, "firewall.allow[0].ports[0]: range '90-80' runs backwards; write 80-90"),
    ("""\
     name: a
     networks: {n: {subnet: 10.0.0.0/24, gateway: 10.0.0.1}, m: {subnet: 10.1.0.0/24, gateway: 10.1.0.1}}
     firewall: {allow: [{form: n, to: m}]}
     vms: {x: {}}
     """, "unknown key 'form' (did you mean 'from'?)"),
    ("""\
     name: a
     networks: {n: {subnet: 10.0.0.0/24, gateway: 10.0.0.1}, m: {subnet: 10.0.0.0/25, gateway: 10.0.0.2}}
     vms: {x: {}}
     """, "networks.m.subnet: 10.0.0.0/25 overlaps 10.0.0.0/24 of network 'n'"),
    ("""\
     name: a
     networks: {n: {subnet: 10.0.0.0/24}}
     vms: {x: {nics: [{network: n}], services: [{port: 80}]}}
     """, "vms.x.services: VM 'x' exposes services but none of its NICs has an address ravel knows"),
    ("""\
     name: a
     networks: {n: {subnet: 10.0.0.0/24, dhcp: true}}
     vms:
       x: {nics: [{network: n}], services: [{port: 80, host_port: 9000}]}
       y: {nics: [{network: n}], services: [{port: 81, host_port: 9000}]}
     """, "vms.y.services[0].host_port: host port 9000/tcp is already used by x.services[0]"),
    ("""\
     name: a
     networks: {n: {subnet: 10.0.0.0/24, dhcp: true}}
     vms: {x: {nics: [{network: n}], services: [{port: 80, allow: [10.0.0.1/8]}]}}
     """, "vms.x.services[0].allow[0]: '10.0.0.1/8' is not an IPv4 CIDR"),
    ("""\
     name: a
     networks: {n: {subnet: 10.0.0.0/29, dhcp: true}}
     vms: {x: {count: 6, nics: [{network: n}]}}
     """, "networks.n.subnet: 10.0.0.0/29 has room for 5 more addresses but 6 NICs need a lease"),
])
def test_network_service_problems_are_located(text, expected):
    lines = problems(text)
    assert any(expected in line for line in lines), lines


def test_schema_documents_the_new_keys():
    schema = json.dumps(json_schema())
    for key in ('"nat"', '"host_port"', '"routing"', '"firewall"', '"from"', '"deny"'):
        assert key in schema


# -- plan --------------------------------------------------------------------------------------

def test_assigned_leases_avoid_fixed_addresses_and_gateways():
    bp, plan, net, _ = lab()
    web = net.of_vm("web-1")[0]
    assert web.assigned and web.dhcp and web.ip.network == IPv4Network("10.61.0.0/24")
    assert web.ip.ip not in (IPv4Address("10.61.0.0"), IPv4Address("10.61.0.1"), IPv4Address("10.61.0.255"))
    db = net.of_vm("db")[0]
    assert str(db.ip) == "10.62.0.21/24" and not db.assigned and db.dhcp
    assert net.of_vm("cli")[0].ip is None  # lan has no DHCP from ravel: the guest's business
    assert net.of_vm("web-1")[1].ip is None


def test_host_side_addresses_routes_and_carriers():
    bp, plan, net, docs = lab()
    assert set(net.services) == {"front", "back", "lan"}  # l2 needs nothing from the host
    assert str(net.services["front"].address) == "10.61.0.1/24" and net.services["front"].gateway
    assert net.services["front"].mac == gateway_mac("lab", "front")
    assert net.routes == (("back", "front"), ("back", "lan"))
    carriers = hosts_on_network(plan.placement, net)
    # the host of db routes back<->front and back<->lan itself, so it carries front and lan too
    db_host = plan.placement.vm_host["db"]
    assert db_host in carriers["front"] and db_host in carriers["lan"]
    web_host = plan.placement.vm_host["web-1"]
    assert "lan" not in [n["name"] for n in docs[web_host]["networks"]] or \
        plan.placement.vm_host["cli"] == web_host or plan.placement.vm_host["srv"] == web_host


def test_service_address_of_a_network_without_gateway_is_the_highest_free():
    bp = load_blueprint("name: a\nnetworks: {n: {subnet: 10.0.0.0/29, dhcp: true}}\n"
                        "vms: {x: {nics: [{network: n, ip: 10.0.0.6}]}, y: {nics: [{network: n}]}}\n", "a")
    net = plan_network(bp, "a", {"n": 1})
    assert str(net.services["n"].address) == "10.0.0.5/29" and not net.services["n"].gateway
    assert net.of_vm("y")[0].ip.ip not in (IPv4Address("10.0.0.5"), IPv4Address("10.0.0.6"))


def test_leases_stay_put_when_another_vm_comes_or_goes():
    base = "name: a\nnetworks: {n: {subnet: 10.0.0.0/24, dhcp: true}}\nvms:\n  web: {count: 3, nics: [{network: n}]}\n"
    one = plan_network(load_blueprint(base, "a"), "a", {"n": 1})
    more = plan_network(load_blueprint(base + "  db: {nics: [{network: n}]}\n", "a"), "a", {"n": 1})
    assert [n.ip for n in one.nics] == [n.ip for n in more.nics[:3]]
    # and the same blueprint in another app gets the same addresses (names decide, not the app)
    other = plan_network(load_blueprint(base, "a"), "b", {"n": 1})
    assert [n.ip for n in one.nics] == [n.ip for n in other.nics]


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 60), st.integers(24, 28), st.integers(0, 3))
def test_property_leases_are_unique_and_usable(count, prefix, fixed):
    net_cidr = IPv4Network(f"10.9.0.0/{prefix}")
    usable = net_cidr.num_addresses - 2
    count = min(count, usable - 1 - fixed)
    if count < 1:
        return
    fixed_nics = "".join(f"  f{i}: {{nics: [{{network: n, ip: 10.9.0.{i + 2}}}]}}\n" for i in range(fixed))
    text = (f"name: a\nnetworks: {{n: {{subnet: {net_cidr}, gateway: 10.9.0.1, dhcp: true}}}}\nvms:\n"
            f"  w: {{count: {count}, nics: [{{network: n}}]}}\n" + fixed_nics)
    net = plan_network(load_blueprint(text, "a"), "a", {"n": 1})
    ips = [n.ip.ip for n in net.nics]
    assert len(set(ips)) == len(ips) == count + fixed
    for ip in ips:
        assert ip in net_cidr and ip not in (net_cidr.network_address, net_cidr.broadcast_address,
                                             IPv4Address("10.9.0.1"))


def test_assign_ip_refuses_a_full_network():
    bp = load_blueprint("name: a\nnetworks: {n: {subnet: 10.0.0.0/29}}\nvms: {x: {}}\n", "a")
    taken = {IPv4Address(f"10.0.0.{i}") for i in range(1, 7)}
    with pytest.raises(ValueError):
        assign_ip(bp.network("n"), "x", 0, taken)


def test_service_forwards_target_the_known_address():
    bp, plan, net, _ = lab()
    fws = service_forwards(bp, plan.placement, net)
    assert [(f.vm, f.port, f.host_port) for f in fws] == [("web-1", 8080, None), ("web-1", 9090, 47611)]
    assert fws[0].target == str(net.of_vm("web-1")[0].ip.ip)
    assert fws[0].host == plan.placement.vm_host["web-1"]


# -- render ------------------------------------------------------------------------------------

def test_guest_cmdline_leaves_dhcp_nics_to_dhcp_and_routes_static_ones():
    bp, plan, net, _ = lab()
    assert guest_cmdline(bp.vm("web-1"), net.of_vm("web-1"), {"front": "10.61.0.1"}) == "ravel.name=web-1"
    srv = guest_cmdline(bp.vm("srv"), net.of_vm("srv"), {"lan": "10.63.0.1"})
    assert srv == "ravel.name=srv ravel.ip=eth0:10.63.0.2/24 ravel.gw=10.63.0.1"


def test_router_section_of_a_host():
    bp, plan, net, docs = lab()
    doc = docs[plan.placement.vm_host["web-1"]]
    router = doc["router"]
    assert router["domain"] == "lab.lab"
    front = next(i for i in router["interfaces"] if i["network"] == "front")
    assert front == {"network": "front", "bridge": "rb1000", "vxlan": "rx1000", "address": "10.61.0.1/24",
                     "mac": gateway_mac("lab", "front"), "egress_mac": front["egress_mac"], "gateway": True,
                     "dhcp": True, "dns": True, "nat": True, "mtu": 1500}
    assert front["egress_mac"].startswith("06:72:76:") and front["egress_mac"] != front["mac"]
    assert ["back", "front"] in router["routes"]
    assert router["allow"] == [{"from": "back", "to": "front", "protocol": "tcp",
                                "ports": [[8080, 8080], [9000, 9010]]}]
    web = net.of_vm("web-1")[0]
    assert {"network": "front", "mac": web.mac, "ip": str(web.ip.ip), "name": "web-1"} in router["leases"]
    assert {"name": "db", "ip": "10.62.0.21"} in router["names"]
    parse_desired(json.loads(json.dumps(doc)))  # the runtime accepts what the renderer makes


def test_a_blueprint_without_network_services_renders_no_router():
    _, _, _, docs = lab("name: a\nnetworks: {n: {subnet: 10.0.0.0/24}}\nvms: {x: {nics: [{network: n}]}}\n",
                        {"n": 1000})
    assert all("router" not in d for d in docs.values())


# -- host runtime: the document --------------------------------------------------------------

def router_doc():
    bp, plan, net, docs = lab()
    return copy.deepcopy(docs[plan.placement.vm_host["db"]])


@pytest.mark.parametrize("change, expected", [
    (lambda r: r["interfaces"][0].update(bridge="rb9"), "are not network"),
    (lambda r: r["interfaces"][0].update(address="10.61.0.0/24"), "must be a usable IPv4 host address"),
    (lambda r: r["interfaces"][0].update(mac="01:00:5e:00:00:01"), "is not a unicast MAC address"),
    (lambda r: r.update(routes=[["front", "nope"]]), "nope has no gateway interface here"),
    (lambda r: r.update(allow=[{"from": "front", "to": "lan", "protocol": "tcp"}]), "are not routed to each other"),
    (lambda r: r.update(allow=[{"from": "back", "to": "front", "protocol": "gre"}]), "is not one of"),
    (lambda r: r["leases"].append(dict(r["leases"][0])), "already has leases"),
    (lambda r: r.update(domain="bad domain"), "is not a DNS domain"),
    (lambda r: r.update(extra=1), "router.extra: unknown key"),
])
def test_desired_router_problems(change, expected):
    doc = router_doc()
    change(doc["router"])
    with pytest.raises(DesiredError) as info:
        parse_desired(doc)
    assert any(expected in p for p in info.value.problems), info.value.problems


# -- host runtime: nftables and dnsmasq text --------------------------------------------------

def test_nft_ruleset_routes_filters_and_nats():
    d = parse_desired(router_doc())
    text = nft_ruleset(d)
    name = table_name("lab")
    assert text.startswith(f"table inet {name} {{}}\ndelete table inet {name}\ntable inet {name} {{\n")
    lines = [line.strip() for line in text.splitlines()]
    assert "type filter hook forward priority filter; policy drop;" in lines
    assert "ct state established,related accept" in lines
    for n in d.networks:  # every network's own (bridged) traffic
        assert f'iifname "{n.bridge}" oifname "{n.bridge}" accept' in lines
    assert 'iifname "rb1000" oifname "rb1001" accept' in lines  # front -> back: everything
    assert 'iifname "rb1001" oifname "rb1000" jump allow_back_to_front' in lines
    assert "meta l4proto tcp th dport { 8080, 9000-9010 } accept" in lines
    assert not any('"rb1000" oifname "rb1002"' in line for line in lines)  # front <-> lan denied
    assert 'iifname "rb1001" oifname "rb1002" accept' in lines  # back -> lan
    assert 'iifname "rb1000" oifname "ul0" ip saddr 10.61.0.0/24 accept' in lines
    assert 'oifname "ul0" ip saddr 10.61.0.0/24 masquerade' in lines
    # nothing forwarded reaches the fence (the app's other hosts among it), whatever else says
    forward = lines.index("type filter hook forward priority filter; policy drop;")
    assert lines[forward + 1] == 'oifname "ul0" ip daddr @fence counter drop'
    assert "udp dport 4789 ip saddr != @peers counter drop" in lines
    # the gateway's ARP and DHCP stay off the tunnels; the shared MAC never leaves through one
    assert 'oifname "rx1000" arp operation request arp daddr ip 10.61.0.1 drop' in lines
    assert 'oifname "rx1000" ether type ip udp dport 67 drop' in lines
    assert not any('"rx1002" ether type ip udp' in line for line in lines)  # lan: guests' own DHCP
    front = d.router.interface("front")
    assert f'oifname "rx1000" ether saddr {front.mac} ether saddr set {front.egress_mac}' in lines
    assert any(f"ether daddr {front.mac} arp operation reply ether daddr set ff:ff:ff:ff:ff:ff" in line
               for line in lines)
    digests = table_digests(d)
    assert f'comment "ravel {digests["inet"]}"' in lines and f'comment "ravel {digests["bridge"]}"' in lines


def test_dnsmasq_serves_fixed_leases_and_names_only():
    d = parse_desired(router_doc())
    argv = dnsmasq_argv(d)
    assert argv[0] == "dnsmasq" and "--conf-file=/dev/null" in argv
    assert "--local=/#/" in argv and "--no-resolv" in argv  # nothing outside the app resolves
    assert "--dhcp-ignore=tag:!known" in argv
    assert "--dhcp-range=set:rb1000,10.61.0.0,static,255.255.255.0,12h" in argv
    assert "--dhcp-option=tag:rb1000,option:router,10.61.0.1" in argv
    assert "--dhcp-option=tag:rb1000,option:mtu,1500" in argv
    assert "--host-record=db.lab.lab,db,10.62.0.21" in argv
    assert "--interface=rb1002" not in argv  # lan: no DHCP or DNS from ravel
    assert any(a.startswith("--dhcp-host=") and a.endswith(",10.62.0.21,db") for a in argv)


def test_no_dnsmasq_without_dhcp_or_dns():
    doc = router_doc()
    for i in doc["router"]["interfaces"]:
        i.update(dhcp=False, dns=False)
    doc["router"]["leases"] = []
    assert dnsmasq_argv(parse_desired(doc)) is None


# -- host runtime: reconcile -------------------------------------------------------------------

def converged_router(d) -> RouterFacts:
    return RouterFacts(
        app=d.app, tools={"nft": True, "dnsmasq": True},
        bridges={i.bridge: BridgeFact(i.mac, (i.address,)) for i in d.router.interfaces},
        sysctls=wanted_sysctls(d), tables=table_digests(d),
        dnsmasq=DnsmasqFact(pid=42, running=True, argv=tuple(dnsmasq_argv(d)), starttime=7))


def test_fresh_host_gets_every_service_in_order():
    d = parse_desired(router_doc())
    steps = router_actions(d, RouterFacts(app="lab", tools={"nft": True, "dnsmasq": True}))
    kinds = [s.kind for s in steps]
    assert kinds[-2:] == ["router.nft", "router.dnsmasq.start"]
    assert kinds.count("router.address") == len(d.router.interfaces)
    addr = next(s for s in steps if s.target == "rb1000")
    assert ("ip", "addr", "add", "10.61.0.1/24", "dev", "rb1000") in addr.argv
    assert ("ip", "link", "set", "dev", "rb1000", "address", gateway_mac("lab", "front")) in addr.argv
    assert all(s.kind in KINDS and s.reason for s in steps)


def test_converged_services_need_nothing_and_changes_are_minimal():
    d = parse_desired(router_doc())
    facts = converged_router(d)
    assert router_actions(d, facts) == []
    # a stray address goes, a changed lease restarts dnsmasq, an edited table is replaced
    bridges = dict(facts.bridges)
    bridges["rb1000"] = BridgeFact(bridges["rb1000"].mac, ("10.61.0.1/24", "10.61.0.9/24"))
    doc = router_doc()
    doc["router"]["leases"][0]["ip"] = "10.61.0.99"
    d2 = parse_desired(doc)
    stale = RouterFacts(app="lab", tools=facts.tools, bridges=bridges, sysctls=facts.sysctls,
                        tables={"inet": "0", "bridge": table_digests(d2)["bridge"]}, dnsmasq=facts.dnsmasq)
    steps = router_actions(d2, stale)
    assert [(s.kind, s.target) for s in steps] == [
        ("router.address", "rb1000"), ("router.nft", table_name("lab")),
        ("router.dnsmasq.stop", "dnsmasq"), ("router.dnsmasq.start", "dnsmasq")]
    assert steps[0].argv == (("ip", "addr", "del", "10.61.0.9/24", "dev", "rb1000"),)
    assert "inet table out of date" in steps[1].reason


def test_recreated_bridges_get_their_address_again():
    d = parse_desired(router_doc())
    steps = router_actions(d, converged_router(d), fresh_bridges={"rb1001"})
    assert [(s.kind, s.target) for s in steps] == [
        ("router.sysctl", "/proc/sys/net/ipv6/conf/rb1001/disable_ipv6"), ("router.address", "rb1001")]


def test_whole_plan_keeps_its_phases_and_teardown_removes_services():
    d = parse_desired(router_doc())
    from ravel.host.facts import Facts
    actions = reconcile(d, Facts(run_dir=d.run_dir, router=RouterFacts(app="lab", tools={"nft": True, "dnsmasq": True})))
    order = [phase(a.kind) for a in actions]
    assert order == sorted(order)
    assert [a.kind for a in actions].index("router.dnsmasq.start") < [a.kind for a in actions].index("vm.start")
    gone = teardown(Facts(run_dir=d.run_dir, router=converged_router(d)), d)
    assert [a.kind for a in gone[:2]] == ["router.dnsmasq.stop", "router.nft.delete"]
    assert gone[1].argv == (("nft", "delete", "table", "inet", "ravel-lab"),
                            ("nft", "delete", "table", "bridge", "ravel-lab"))
    assert router_teardown(d.run_dir, RouterFacts(app="lab")) == []


def test_services_removed_from_the_blueprint_are_taken_down():
    doc = router_doc()
    del doc["router"]
    d = parse_desired(doc)
    facts = RouterFacts(app="lab", tools={"nft": True, "dnsmasq": True},
                        bridges={"rb1000": BridgeFact("02:72:76:00:00:01", ("10.61.0.1/24",))},
                        tables={"inet": "x", "bridge": "y"},
                        dnsmasq=DnsmasqFact(pid=42, running=True, argv=("dnsmasq",), starttime=1))
    steps = router_actions(d, facts)
    kinds = [(s.kind, s.target) for s in steps]
    # the inet table stays (the tunnels' fence), the bridge table goes, in one transaction
    assert kinds == [("router.address", "rb1000"), ("router.nft", "ravel-lab"),
                     ("router.dnsmasq.stop", "dnsmasq")]
    assert "bridge table no longer desired" in steps[1].reason
    assert steps[1].params["ruleset"].endswith("table bridge ravel-lab {}\ndelete table bridge ravel-lab\n")


def test_missing_tools_are_reported_before_any_change():
    from ravel.host.reconcile import problems
    from ravel.host.facts import Facts
    d = parse_desired(router_doc())
    found = problems(d, Facts(run_dir=d.run_dir, router=RouterFacts(app="lab", tools={"nft": False, "dnsmasq": False})))
    assert any("apt-get install nftables" in p for p in found)
    assert any("apt-get install dnsmasq-base" in p for p in found)


def test_fact_parsers():
    text = json.dumps([
        {"ifname": "rb1000", "address": "02:72:76:AA:BB:CC",
         "addr_info": [{"family": "inet", "local": "10.61.0.1", "prefixlen": 24},
                       {"family": "inet6", "local": "fe80::1", "prefixlen": 64}]},
        {"ifname": "eth0", "address": "52:54:00:00:00:01", "addr_info": []},
    ])
    assert parse_bridge_addresses(text, {"rb1000"}) == {"rb1000": BridgeFact("02:72:76:aa:bb:cc", ("10.61.0.1/24",))}
    assert parse_table_comment('table inet ravel-x {\n\tcomment "ravel 0123abcd"\n') == "0123abcd"
    assert parse_table_comment("table inet ravel-x {\n") == ""


def test_status_table_shows_exposed_services_only_when_there_are_some():
    from rich.console import Console

    from ravel.cli.render import vm_table
    from ravel.run.lab import VmStatus

    def text(vms) -> str:
        con = Console(width=200, record=True)
        con.print(vm_table("lab", vms))
        return con.export_text()

    web = VmStatus("web-1", "host-1", "running", "tcg", ["10.61.0.161/24"], ["52:54:00:00:00:01"], "c", "l",
                   services=["127.0.0.1:40123->8080/tcp"])
    db = VmStatus("db", "host-2", "running", "tcg", ["10.62.0.21/24"], ["52:54:00:00:00:02"], "c", "l")
    shown = text([web, db])
    assert "services" in shown and "127.0.0.1:40123->8080/tcp" in shown
    assert "services" not in text([db])


def test_br_netfilter_only_where_an_allow_list_makes_a_direction_one_way():
    from ravel.host.netconf import BR_NF_CALL_IPTABLES
    doc = router_doc()
    one_way = parse_desired(doc)
    assert one_way.router.allow, "the test lab's blueprint has an allow list"
    assert wanted_sysctls(one_way)[BR_NF_CALL_IPTABLES] == "1"
    doc["router"]["allow"] = []
    open_routing = parse_desired(doc)
    assert wanted_sysctls(open_routing)[BR_NF_CALL_IPTABLES] == "0"
    # turned off where an earlier publish turned it on; nothing to do where it was never loaded
    facts = converged_router(open_routing)
    on = RouterFacts(**{**facts.__dict__, "sysctls": {**facts.sysctls, BR_NF_CALL_IPTABLES: "1"}})
    steps = [s for s in router_actions(open_routing, on) if s.kind == "router.sysctl"]
    assert [(s.target, s.params["value"], s.params["modprobe"]) for s in steps] == [(BR_NF_CALL_IPTABLES, "0", "")]
    absent = RouterFacts(**{**facts.__dict__, "sysctls": {**facts.sysctls, BR_NF_CALL_IPTABLES: None}})
    assert not [s for s in router_actions(open_routing, absent) if s.kind == "router.sysctl"]


def test_status_table_never_cuts_a_forwarded_port_short_on_80_columns():
    from rich.console import Console

    from ravel.cli.render import vm_table
    from ravel.run.lab import VmStatus

    con = Console(width=80, record=True)  # a pipe, or a default terminal
    con.print(vm_table("services-lab", [
        VmStatus("web-1", "host-1", "running", "tcg", ["10.61.0.161/24", "10.62.0.161/24"],
                 ["52:54:00:00:00:01"], "c", "l", services=["127.0.0.1:40123->8080/tcp", "127.0.0.1:40124->22/tcp"])]))
    shown = con.export_text()
    for text in ("127.0.0.1:40123->8080/tcp", "127.0.0.1:40124->22/tcp", "10.61.0.161/24", "10.62.0.161/24",
                 "ravel console services-lab VM"):
        assert text in shown, shown
