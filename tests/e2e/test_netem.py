"""Network tools on a real lab (issue 17): link impairment (ravel netem), cable pulls (ravel
link), packet capture across hosts (ravel capture) and jumbo frames, on one lab of two busybox
guests on two namespace hosts joined by VXLAN, with a 9000-byte network.

On a kernel without sch_netem (this machine's) the impairment runs in the host runtime's relay
(host/relay_netem.py); the checks are the same.
"""

from __future__ import annotations

import io
import os
import re
import signal
import subprocess
import sys
import time

import dpkt
import pytest
from dpkt import pcapng

from conftest import GUEST, ROOT, Ravel, force_cleanup, leftovers, ready_count, wait_until
from tests.jsonschemas import parsed

APP = f"nt{os.getpid()}"
A, B = "10.77.0.11", "10.77.0.12"

BLUEPRINT = f"""\
name: nt
networks:
  lan: {{subnet: 10.77.0.0/24, gateway: 10.77.0.1, dhcp: true, mtu: 9000}}
defaults:
  memory: 192MiB
  boot: {{kernel: {GUEST}/vmlinuz, initrd: {GUEST}/initrd.img, cmdline: console=ttyS0 quiet}}
vms:
  a: {{nics: [{{network: lan, ip: {A}, impair: {{rate: 1gbit}}}}]}}
  b: {{nics: [{{network: lan, ip: {B}}}]}}
placement:
  host_types: [local-small]
  anti_affinity: [[a, b]]
"""


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    home = tmp_path_factory.mktemp("home")
    bp = home / "nt.yaml"
    bp.write_text(BLUEPRINT)
    r = Ravel(home)
    r.bp = bp
    try:
        r("publish", str(bp), "--name", APP, "--wait", "--timeout", "240")
        yield r
    finally:
        r("destroy", APP, "--yes", check=False)
        left = leftovers(APP, home)
        relays = subprocess.run(["pgrep", "-f", f"netem-relay.*{APP}"], capture_output=True, text=True).stdout.split()
        force_cleanup(APP, home)
        assert not left, f"left behind: {left}"
        assert not relays, f"netem relays left running: {relays}"


def sh(r: Ravel, vm: str, cmd: str, timeout: float = 60) -> str:
    with r.console(APP, vm) as con:
        return con.run(cmd, timeout=timeout)[1]


def rtts(out: str) -> tuple[float, float]:
    m = re.search(r"min/avg/max = ([\d.]+)/([\d.]+)/([\d.]+)", out)
    assert m, out
    return float(m.group(1)), float(m.group(3))


def nics(r: Ravel) -> dict[str, dict]:
    doc = parsed(r("netem", APP, "--json").stdout, "netem")
    return {f"{n['vm']}:{n['nic']}": n for n in doc["nics"]}


def test_jumbo_frames_cross_hosts(lab):
    st = lab.status(APP)
    assert st["a"]["host"] != st["b"]["host"]
    assert "mtu 9000" in sh(lab, "a", "ip link show eth0")  # from DHCP
    # 8972 bytes of ICMP + 28 of headers = a 9000-byte packet, sent with DF: no fragments
    out = sh(lab, "a", f"ping -c 2 -W 3 -s 8972 {B}")
    assert "8980 bytes from" in out and " 0% packet loss" in out, out


def test_blueprint_impairment_is_applied_and_listed(lab):
    n = nics(lab)
    assert n["a:0"]["impair"] == {"rate_kbit": 1000000} and n["a:0"]["impair_source"] == "blueprint"
    assert n["b:0"]["impair"] == {} and n["b:0"]["impair_source"] == "" and n["b:0"]["link"] == "up"
    ns = f"rv-{APP}-{n['a:0']['host']}"
    qdisc = subprocess.run(["ip", "netns", "exec", ns, "tc", "qdisc", "show", "dev", n["a:0"]["tap"]],
                           capture_output=True, text=True).stdout
    assert "tbf" in qdisc and "rate 1Gbit" in qdisc, qdisc  # a rate alone: the kernel's tbf
    table = lab("netem", APP).stdout
    assert "a:0" in table and "rate 1gbit" in table and "blueprint" in table


def relays(tap: str) -> list[str]:
    return subprocess.run(["pgrep", "-f", f"netem-relay --tap {tap} "], capture_output=True, text=True).stdout.split()


def test_mtu_refused_where_it_cannot_be_carried(lab, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(BLUEPRINT.replace("mtu: 9000", "mtu: 9001"))
    p = lab("validate", str(bad), check=False)
    assert p.returncode == 2 and "networks.lan.mtu" in p.stderr, p.stderr
    p = lab("plan", str(lab.bp), "--provider", "gcp", check=False)
    assert p.returncode == 2 and "at most 8846" in p.stderr and "GCP VPC" in p.stderr, p.stderr
    assert "guest MTU: up to 9000 on local, this lab uses 9000 (elsewhere: aws 8951, gcp 8846)" in lab("plan", str(lab.bp)).stdout


def test_delay_loss_and_clear(lab):
    base_min, base_max = rtts(sh(lab, "a", f"ping -c 3 -W 3 {B}"))
    print(f"RTT a->b, no impairment: min {base_min} max {base_max} ms")
    lab("netem", APP, "b", "--delay", "100ms")
    n = nics(lab)["b:0"]
    assert n["impair"] == {"delay_us": 100000}
    if not os.path.exists("/sys/module/sch_netem"):  # this kernel has no netem: the relay does it
        assert relays(n["tap"]), "no netem relay for b's tap"
    lo, hi = rtts(sh(lab, "a", f"ping -c 5 -W 3 {B}"))
    print(f"RTT a->b, delay 100ms on b: min {lo} max {hi} ms")
    assert 100 <= lo and hi < 130, (lo, hi)
    # kept by a re-publish of the same blueprint (nothing else changes)
    lab("publish", str(lab.bp), "--name", APP)
    assert lab("publish", str(lab.bp), "--name", APP, "--dry-run", check=False).returncode == 0  # no drift
    st = lab.status(APP)
    assert st["b"]["nics"][0]["impair"] == {"delay_us": 100000} and st["b"]["nics"][0]["impair_source"] == "live"
    lo, hi = rtts(sh(lab, "a", f"ping -c 3 -W 3 {B}"))
    print(f"RTT a->b, delay 100ms on b, after a re-publish: min {lo} max {hi} ms")
    assert 100 <= lo and hi < 130, (lo, hi)
    lab("netem", APP, "b:0", "--loss", "100%")
    out = sh(lab, "a", f"ping -c 3 -W 1 {B}")
    assert "100% packet loss" in out, out
    lab("netem", APP, "b:lan", "--clear")
    assert nics(lab)["b:0"]["impair"] == {}
    assert not relays(n["tap"])
    lo, hi = rtts(sh(lab, "a", f"ping -c 3 -W 3 {B}"))
    print(f"RTT a->b, cleared: min {lo} max {hi} ms")
    assert hi < 60, (lo, hi, base_min, base_max)


def _rate_of(path: str, dst: str) -> float:
    """Bits per second of the TCP payload-carrying frames to `dst` in a capture, first to last."""
    first = last = None
    total = 0
    with open(path, "rb") as f:
        for ts, buf in pcapng.Reader(f):
            ip = dpkt.ethernet.Ethernet(buf).data
            if not isinstance(ip, dpkt.ip.IP) or dpkt.utils.inet_to_str(ip.dst) != dst:
                continue
            if not isinstance(ip.data, dpkt.tcp.TCP) or not ip.data.data:
                continue
            first = ts if first is None else first
            if last is not None:
                total += len(buf)
            last = ts
    assert first is not None and last is not None and last > first + 1, "no transfer captured"
    return total * 8 / (last - first)


@pytest.mark.parametrize("extra", [(), ("--delay", "5ms")], ids=["tbf", "with-delay"])
def test_rate_limits_a_transfer(lab, tmp_path, extra):
    # a rate alone is the kernel's tbf; with a delay it is netem + tbf (the relay, without netem)
    lab("netem", APP, "b", "--rate", "10mbit", *extra)
    pcap = tmp_path / "rate.pcapng"
    with lab.console(APP, "b") as con:
        con.send("nc -l -p 5001 > /dev/null\n")
        time.sleep(0.5)
        cap = lab.popen("capture", APP, "b", "-f", "tcp port 5001", "--duration", "60", "-w", str(pcap))
        time.sleep(2)
        sh(lab, "a", f"dd if=/dev/zero bs=1k count=4000 | nc {B} 5001", timeout=60)
        time.sleep(1)
        cap.send_signal(signal.SIGINT)  # Ctrl-C: what is held is written, the hosts' tcpdumps end
        _, err = cap.communicate(timeout=60)
        assert cap.returncode == 0 and "packets captured" in err, err
        con.send("\x03\n")
    rate = _rate_of(str(pcap), B)
    print(f"TCP a->b with rate 10mbit {' '.join(extra)} on b: {rate / 1e6:.2f} Mbit/s")
    assert 8e6 <= rate <= 12e6, f"{rate / 1e6:.2f} Mbit/s"
    lab("netem", APP, "b", "--clear")


def test_cable_pull_kept_across_stop_start(lab):
    doc = parsed(lab("link", APP, "a", "down", "--json").stdout, "netem")
    assert doc["nics"][0]["link"] == "down" and doc["changed"] >= 1
    st = {v["name"]: v for v in parsed(lab("status", APP, "--json").stdout, "status")[APP]}
    assert st["a"]["nics"][0]["link"] == "down"
    assert "a:0 (lan): cable pulled" in lab("status", APP).stdout
    assert sh(lab, "a", "cat /sys/class/net/eth0/carrier").strip().endswith("0")
    assert "100% packet loss" in sh(lab, "b", f"ping -c 2 -W 1 {A}")
    log = lab.status(APP)["a"]["log"]
    boots = ready_count(log, "a")
    lab("stop", APP, "a")
    lab("start", APP, "a")
    wait_until(lambda: ready_count(log, "a") > boots, 90, "a booted again")
    assert sh(lab, "a", "cat /sys/class/net/eth0/carrier").strip().endswith("0")  # still pulled
    lab("link", APP, "a:0", "up")
    assert sh(lab, "a", "cat /sys/class/net/eth0/carrier").strip().endswith("1")
    wait_until(lambda: " 0% packet loss" in sh(lab, "b", f"ping -c 1 -W 2 {A}"), 40, "a answering again")


def test_capture_merges_both_hosts_each_packet_once(lab, tmp_path):
    out = tmp_path / "lan.pcapng"
    cap = lab.popen("capture", APP, "lan", "-c", "20", "-f", "icmp", "-w", str(out), "--duration", "60")
    time.sleep(2)
    sh(lab, "a", f"ping -c 10 -i 0.2 -W 3 -s 8972 {B}")
    _, err = cap.communicate(timeout=60)
    assert cap.returncode == 0 and "20 packets captured" in err, err
    with open(out, "rb") as f:
        raw = f.read()
    with open(out, "rb") as f:
        packets = list(pcapng.Reader(f))
    assert len(packets) == 20
    seen = []
    for ts, buf in packets:
        ip = dpkt.ethernet.Ethernet(buf).data
        icmp = ip.data
        assert isinstance(icmp, dpkt.icmp.ICMP) and len(buf) == 9014
        seen.append((dpkt.utils.inet_to_str(ip.src), icmp.type, icmp.data.seq))
    assert len(set(seen)) == 20  # each packet once
    assert sum(1 for s in seen if s[0] == A and s[1] == 8) == 10  # requests, captured on a's host
    assert sum(1 for s in seen if s[0] == B and s[1] == 0) == 10  # replies, captured on b's host
    assert [ts for ts, _ in packets] == sorted(ts for ts, _ in packets)
    # one interface per host, and packets from both
    st = lab.status(APP)
    assert st["a"]["host"].encode() in raw and st["b"]["host"].encode() in raw
    ifaces = {int.from_bytes(raw[i + 8:i + 12], "little") for i in _epb_offsets(raw)}
    assert ifaces == {0, 1}


def _epb_offsets(raw: bytes):
    """Offsets of the enhanced packet blocks (type 6) of a little-endian pcapng."""
    i = 0
    while i + 8 <= len(raw):
        kind, size = int.from_bytes(raw[i:i + 4], "little"), int.from_bytes(raw[i + 4:i + 8], "little")
        if kind == 6:
            yield i
        i += size


def test_capture_to_stdout_as_pcap(lab):
    # what `ravel capture lab lan | wireshark -k -i -` reads: a pcap stream on stdout
    p = subprocess.Popen([sys.executable, "-m", "ravel", "capture", APP, "a", "-c", "4", "-f", "icmp",
                          "--format", "pcap", "--duration", "60"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         env=lab.env(), cwd=ROOT, stdin=subprocess.DEVNULL)
    time.sleep(2)
    sh(lab, "b", f"ping -c 3 -W 3 {A}")
    out, err = p.communicate(timeout=60)
    assert p.returncode == 0, err
    packets = list(dpkt.pcap.Reader(io.BytesIO(out)))
    kinds = sorted(dpkt.ethernet.Ethernet(buf).data.data.type for _, buf in packets)
    assert kinds == [0, 0, 8, 8]  # a's NIC both ways: two requests in, two replies out
