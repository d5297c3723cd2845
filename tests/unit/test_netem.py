"""Network tools, the pure parts: impairment values (blueprint and CLI), jumbo-frame limits per
provider, the desired document's impair/links_down, the host's tc commands and reconcile, the
state's NIC settings, and the capture merge (each packet once, in time order)."""

from __future__ import annotations

import copy
import io
import queue
import textwrap

import dpkt
import pytest
from dpkt import pcapng

from ravel.errors import BlueprintError
from ravel.host import netem as host_netem
from ravel.host.desired import DesiredError, parse_desired
from ravel.host.reconcile import reconcile
from ravel.model.dump import impair_dict
from ravel.model.impair import Impair, effective, impair_from, parse_percent, parse_rate, parse_time
from ravel.model.resolve import load_blueprint
from ravel.plan.app import resolve_app
from ravel.plan.catalogue import load_catalogue
from ravel.plan.fit import check_fit
from ravel.plan.mtu import host_underlay_mtu, max_guest_mtu
from ravel.plan.plan import make_plan
from ravel.render.host_state import HostSite, desired_docs
from ravel.run.capture import _merge, _Writer
from ravel.state import State

from tests.unit.test_host_reconcile import DOC, converged


# -- values ----------------------------------------------------------------------------------

def test_units_parse_and_refuse():
    assert parse_time("50ms") == 50_000 and parse_time("200us") == 200 and parse_time("1.5s") == 1_500_000
    assert parse_percent("1%") == 1.0 and parse_percent(0.5) == 0.5 and parse_percent("0.1 %") == 0.1
    assert parse_rate("10mbit") == 10_000 and parse_rate("512kbit") == 512 and parse_rate("1gbit") == 1_000_000
    for bad, parse in (("50", parse_time), ("2m", parse_time), ("101%", parse_percent), ("1", parse_percent),
                       ("10mbps", parse_rate), ("10MB", parse_rate), ("1kbit", parse_rate)):
        with pytest.raises(ValueError):
            parse(bad)


def test_impair_from_checks_jitter_and_words():
    i = impair_from(delay="100ms", jitter="5ms", loss="1%", rate="10mbit")
    assert i.to_doc() == {"delay_us": 100000, "jitter_us": 5000, "loss": 1.0, "rate_kbit": 10000}
    assert i.words() == "delay 100ms jitter 5ms loss 1% rate 10mbit"
    assert not impair_from() and impair_from().words() == "none"
    with pytest.raises(ValueError, match="jitter: needs a delay"):
        impair_from(jitter="5ms")
    with pytest.raises(ValueError, match="more than the delay"):
        impair_from(delay="1ms", jitter="5ms")


def test_live_setting_wins_until_reset():
    bp = Impair(delay_us=1000)
    assert effective(bp, None) == bp and effective(bp, {"impair": None, "link": "down"}) == bp
    assert effective(bp, {"impair": {}}) == Impair()  # --clear
    assert effective(None, {"impair": {"loss": 2.0}}) == Impair(loss=2.0)


BP = textwrap.dedent("""\
    name: t
    networks:
      lan: {subnet: 10.1.0.0/24, mtu: MTU}
    vms:
      a:
        count: 2
        nics: [{network: lan, impair: {delay: 50ms, jitter: 5ms, loss: 1%, rate: 10mbit}}]
      b:
        nics: [{network: lan}]
    placement:
      anti_affinity: [[a, b]]
    """)


def test_blueprint_impair_round_trips_and_errors_are_located():
    bp = load_blueprint(BP.replace("MTU", "1500"), "t.yaml")
    nic = bp.vm("a-2").nics[0]
    assert nic.impair == Impair(50000, 5000, 1.0, 0.0, 0.0, 10000)
    assert impair_dict(nic.impair) == {"delay": "50ms", "jitter": "5ms", "loss": "1%", "rate": "10mbit"}
    assert bp.vm("b").nics[0].impair is None
    with pytest.raises(BlueprintError) as exc:
        load_blueprint(BP.replace("MTU", "1500").replace("rate: 10mbit", "rate: 10mbps"), "t.yaml")
    problems = [str(p) for p in exc.value.problems]
    assert len(problems) == 1 and "vms.a.nics[0].impair.rate" in problems[0] and "bits per second" in problems[0]


# -- jumbo frames ----------------------------------------------------------------------------

def test_mtu_limits_per_provider():
    assert (max_guest_mtu("local"), max_guest_mtu("aws"), max_guest_mtu("gcp")) == (9000, 8951, 8846)
    assert host_underlay_mtu([]) == 1550 and host_underlay_mtu([1500, 9000]) == 9050
    bp = load_blueprint(BP.replace("MTU", "9000"), "t.yaml")
    assert check_fit(bp, load_catalogue("local")) == []
    for provider, most in (("aws", 8951), ("gcp", 8846)):
        problems = check_fit(bp, load_catalogue(provider))
        assert len(problems) == 1 and problems[0].path == "networks.lan.mtu"
        assert f"at most {most}" in problems[0].message and provider in problems[0].message
    assert make_plan(bp, load_catalogue("local")).to_dict()["max_mtu"] == 9000
    with pytest.raises(BlueprintError) as exc:
        load_blueprint(BP.replace("MTU", "9001"), "t.yaml")  # more than any provider carries
    assert "networks.lan.mtu" in str(exc.value.problems[0])


def _docs(mtu: str = "1500", live=None):
    bp = load_blueprint(BP.replace("MTU", mtu), "t.yaml")
    plan = make_plan(bp, load_catalogue("local"))
    ap = resolve_app(bp, "t", plan, {"lan": 1000})
    sites = {h.name: HostSite(h.name, f"198.18.0.{i + 1}", "ul0", f"/run/r/{h.name}", "/d", "tcg")
             for i, h in enumerate(plan.placement.hosts)}
    return plan, desired_docs(ap, sites, live=live)


def test_desired_carries_impairment_links_and_underlay_mtu():
    plan, docs = _docs("9000", live={"b": {0: {"impair": {"loss": 100.0}, "link": "down"}},
                                     "a-1": {0: {"impair": {}, "link": "up"}}})
    host_b = plan.host_of("b")
    assert docs[host_b]["underlay"]["mtu"] == 9050
    impaired = [docs[plan.host_of(vm)]["taps"][0].get("impair") for vm in ("a-1", "a-2")]
    # a-1 cleared live, a-2 keeps the blueprint's
    assert sorted(impaired, key=str) == sorted([None, {"delay_us": 50000, "jitter_us": 5000, "loss": 1.0,
                                                        "rate_kbit": 10000}], key=str)
    (tb,) = docs[host_b]["taps"]
    assert tb["impair"] == {"loss": 100.0}
    (vb,) = docs[host_b]["vms"]
    assert vb["links_down"] == ["net0"] and "tap,id=net0," in " ".join(vb["argv"])
    assert all("links_down" not in v for vm in ("a-1", "a-2") for v in docs[plan.host_of(vm)]["vms"])
    parse_desired(docs[host_b])


def test_desired_refuses_bad_impairment():
    d = copy.deepcopy(DOC)
    d["taps"][0]["impair"] = {"loss": 120, "jitter_us": 5, "rate_kbit": 2}
    d["vms"][0]["links_down"] = ["-x"]
    with pytest.raises(DesiredError) as exc:
        parse_desired(d)
    text = str(exc.value)
    for part in ("impair.loss", "impair.jitter_us", "impair.rate_kbit", "links_down[0]"):
        assert part in text


# -- the host: tc commands and reconcile ------------------------------------------------------

def test_tc_commands():
    assert host_netem.tc_commands("t0", {"delay_us": 100000, "jitter_us": 5000, "loss": 1.0}, "pfifo_fast", 1500) == [
        ("tc", "qdisc", "add", "dev", "t0", "root", "handle", "1:", "netem", "limit", "10000",
         "delay", "100000us", "5000us", "loss", "1%")]
    cmds = host_netem.tc_commands("t0", {"loss": 100.0, "rate_kbit": 10000}, "netem", 9000)
    assert cmds[0] == ("tc", "qdisc", "del", "dev", "t0", "root")
    assert cmds[2][:8] == ("tc", "qdisc", "add", "dev", "t0", "parent", "1:1", "handle")
    assert "tbf" in cmds[2] and "18028" in cmds[2]  # two jumbo frames of burst, more than 10 ms of 10 mbit
    assert host_netem.tc_commands("t0", {"rate_kbit": 1000}, "", 1500) == [
        ("tc", "qdisc", "add", "dev", "t0", "root", "handle", "1:", "tbf", "rate", "1000kbit", "burst", "3028",
         "latency", "100ms")]
    assert host_netem.tc_commands("t0", {}, "tbf", 1500) == [("tc", "qdisc", "del", "dev", "t0", "root")]
    assert host_netem.parse_qdiscs('[{"kind":"netem","handle":"1:","dev":"t0","root":true},'
                                   '{"kind":"tbf","handle":"10:","dev":"t0","parent":"1:1"}]') == {"t0": "netem"}


def _with(doc_changes, netem_facts):
    d = copy.deepcopy(DOC)
    for k, v in doc_changes.items():
        d[k] = v
    desired = parse_desired(d)
    return desired, reconcile(desired, converged(desired, netem=netem_facts))


def test_reconcile_impairment_and_links():
    taps = [dict(DOC["taps"][0], impair={"delay_us": 100000})]
    vms = [dict(DOC["vms"][0], links_down=["n0"])]
    clean = host_netem.NetemFacts({"rt1a0": host_netem.TapQdisc(7, "pfifo_fast")}, {})
    desired, actions = _with({"taps": taps, "vms": vms}, clean)
    assert [(a.kind, a.target) for a in actions] == [("tap.impair", "rt1a0"), ("vm.link", "web-1")]
    assert actions[0].params["cmds"][0][:9] == ["tc", "qdisc", "add", "dev", "rt1a0", "root", "handle", "1:", "netem"]
    assert actions[1].params["down"] == ["n0"] and actions[1].params["netdevs"] == ["n0"]
    # applied and recorded (same ifindex, same QEMU): nothing to do
    done = host_netem.NetemFacts({"rt1a0": host_netem.TapQdisc(7, "netem")}, {
        "taps": {"rt1a0": {"ifindex": 7, "impair": {"delay_us": 100000}}},
        "links": {"web-1": {"pid": 1000, "starttime": 5, "down": ["n0"]}}})
    assert _with({"taps": taps, "vms": vms}, done)[1] == []
    # the QEMU was started again (another pid): its link must be pulled again; the tap was made
    # again (another ifindex, its qdisc is the default): impaired again
    moved = host_netem.NetemFacts({"rt1a0": host_netem.TapQdisc(8, "pfifo_fast")}, {
        "taps": {"rt1a0": {"ifindex": 7, "impair": {"delay_us": 100000}}},
        "links": {"web-1": {"pid": 999, "starttime": 5, "down": ["n0"]}}})
    assert [a.kind for a in _with({"taps": taps, "vms": vms}, moved)[1]] == ["tap.impair", "vm.link"]
    # cleared: the qdisc goes, the link comes back up
    _, actions = _with({}, done)
    assert [(a.kind, a.params.get("cmds") or a.params.get("down")) for a in actions] == [
        ("tap.impair", [["tc", "qdisc", "del", "dev", "rt1a0", "root"]]), ("vm.link", [])]


# -- the state --------------------------------------------------------------------------------

def test_state_keeps_nic_settings_in_backups(tmp_path):
    s = State(tmp_path / "state")
    s.put_app("lab", "local", "running")
    s.set_nic("lab", "a", 0, impair={"delay_us": 1000})
    s.set_nic("lab", "a", 0, link="down")
    s.set_nic("lab", "b", 1, impair={})
    assert s.nic_settings("lab") == {"a": {0: {"impair": {"delay_us": 1000}, "link": "down"}},
                                     "b": {1: {"impair": {}, "link": "up"}}}
    doc = s.export_app("lab")
    s.set_nic("lab", "b", 1, impair=None)  # back to the blueprint's, link up: the row goes
    assert "b" not in s.nic_settings("lab")
    s.import_app(doc)
    assert s.nic_settings("lab")["b"] == {1: {"impair": {}, "link": "up"}}
    s.delete_app("lab")
    assert s.nic_settings("lab") == {}


# -- capture: the merge -----------------------------------------------------------------------

def test_merge_orders_packets_across_hosts_each_once():
    q: queue.Queue = queue.Queue()
    for item in [(3.0, 0, b"c" * 60), (1.0, 1, b"a" * 60), None, (2.0, 1, b"b" * 60), None]:
        q.put(item)
    out = io.BytesIO()
    assert _merge(q, _Writer(out, "pcapng", ["host-1", "host-2"]), 2, None, 5.0) == 3
    out.seek(0)
    got = [(ts, bytes(buf[:1])) for ts, buf in pcapng.Reader(out)]
    assert got == [(1.0, b"a"), (2.0, b"b"), (3.0, b"c")]
    # interface ids name the hosts
    raw = out.getvalue()
    assert raw.count(b"host-1") == 1 and raw.count(b"host-2") == 1


def test_merge_stops_at_count_in_pcap():
    q: queue.Queue = queue.Queue()
    for i in range(5):
        q.put((float(i), 0, bytes([i]) * 60))
    q.put(None)
    out = io.BytesIO()
    assert _merge(q, _Writer(out, "pcap", ["h"]), 1, 3, 5.0) == 3
    out.seek(0)
    assert [ts for ts, _ in dpkt.pcap.Reader(out)] == [0.0, 1.0, 2.0]


# -- the relay's model (host/relay_netem.py) ---------------------------------------------------

def test_relay_model_matches_netem_and_tbf():
    import random

    from ravel.host.relay_netem import TBF_LATENCY_S, Impairment

    frame = bytes(1000)
    assert Impairment({"loss": 100.0}, random.Random(1)).schedule(frame, 10.0) == []
    twice = Impairment({"duplicate": 100.0, "delay_us": 50000}, random.Random(1)).schedule(frame, 10.0)
    assert [at for at, _ in twice] == [10.05, 10.05]
    bent = Impairment({"corrupt": 100.0}, random.Random(1)).schedule(frame, 0.0)[0][1]
    assert bent[:14] == frame[:14] and sum(bin(b).count("1") for b in bent) == 1  # one bit, past the header
    jitter = Impairment({"delay_us": 100000, "jitter_us": 10000}, random.Random(1))
    assert all(0.09 <= jitter.schedule(frame, 0.0)[0][0] <= 0.11 for _ in range(100))
    # 10 mbit: a 1000-byte frame takes 0.8 ms of the wire; a queue longer than tbf's latency drops
    paced = Impairment({"rate_kbit": 10000}, random.Random(1))
    times = [paced.schedule(frame, 0.0) for _ in range(200)]
    sent = [t[0][0] for t in times if t]
    assert sent[:3] == pytest.approx([0.0008, 0.0016, 0.0024])
    assert len(sent) == int(TBF_LATENCY_S / 0.0008) + 1


# -- capture: where each packet is taken (once) -------------------------------------------------

CAPTURE_BP = textwrap.dedent("""\
    name: t
    networks:
      lan: {subnet: 10.1.0.0/24}
      mgmt: {subnet: 10.2.0.0/24}
    vms:
      a: {nics: [{network: lan}, {network: mgmt}]}
      b: {nics: [{network: lan}]}
    """)


def _ctx_with_hosts(tmp_path):
    from ravel.paths import paths
    from ravel.run.sessions import Context

    ctx = Context(paths({"RAVEL_HOME": str(tmp_path)}))
    s = ctx.state
    s.put_app("t", "local", "running", str(tmp_path / "t.yaml"), CAPTURE_BP)
    s.host_ids("t", ["host-1", "host-2"])
    nd = "tap,id=net{},ifname={},script=no,downscript=no"
    s.update_host("t", "host-1", ref="ns", extra={"desired": {
        "networks": [{"name": "lan", "bridge": "rb1000"}, {"name": "mgmt", "bridge": "rb1001"}],
        "vms": [{"name": "a", "argv": ["q", "-netdev", nd.format(0, "rt0n0"), "-netdev", nd.format(1, "rt0n1")]}]}})
    s.update_host("t", "host-2", ref="ns", extra={"desired": {
        "networks": [{"name": "lan", "bridge": "rb1000"}],
        "vms": [{"name": "b", "argv": ["q", "-netdev", nd.format(0, "rt1n0")]}]}})
    for vm, host in (("a", "host-1"), ("b", "host-2")):
        s.put_vm("t", vm, host, "running", {})
    return ctx


def test_capture_sources_take_each_packet_where_it_enters(tmp_path):
    from ravel.errors import StateError
    from ravel.run.capture import Source, sources

    ctx = _ctx_with_hosts(tmp_path)
    try:
        # a network: every guest's tap, what the guest sends; every bridge, what its host sends
        assert sources(ctx, "t", "lan") == [Source("host-1", "rt0n0", "in"), Source("host-2", "rt1n0", "in"),
                                            Source("host-1", "rb1000", "out"), Source("host-2", "rb1000", "out")]
        assert sources(ctx, "t", "mgmt") == [Source("host-1", "rt0n1", "in"), Source("host-1", "rb1001", "out")]
        # a NIC: its tap both ways; a VM: all its NICs
        assert sources(ctx, "t", "a:mgmt") == [Source("host-1", "rt0n1", "inout")]
        assert sources(ctx, "t", "a") == [Source("host-1", "rt0n0", "inout"), Source("host-1", "rt0n1", "inout")]
        with pytest.raises(StateError, match="no network or VM 'c'"):
            sources(ctx, "t", "c")
        with pytest.raises(StateError, match="has no NIC 'eth5'"):
            sources(ctx, "t", "a:eth5")
    finally:
        ctx.close()


def test_a_snapshot_keeps_the_impairments_in_force():
    from ravel.model.dump import blueprint_dict, to_yaml
    from ravel.run.nics import with_live_impairments

    bp = load_blueprint(BP.replace("MTU", "1500"), "t.yaml")
    now = with_live_impairments(bp, {"a-1": {0: {"impair": {}, "link": "down"}},
                                     "b": {0: {"impair": {"delay_us": 20000, "loss": 0.5}, "link": "up"}}})
    again = load_blueprint(to_yaml(blueprint_dict(now)), "snap.yaml")
    assert again.vm("a-1").nics[0].impair is None  # cleared live
    assert again.vm("a-2").nics[0].impair == bp.vm("a-2").nics[0].impair  # the blueprint's
    assert again.vm("b").nics[0].impair == Impair(delay_us=20000, loss=0.5)  # set live
