"""The host runtime (ravel/host) for real: network namespaces, VXLAN, taps, QEMU processes.

Every namespace is named ``rvt<pid><tag>-...`` and every file lives in one temporary directory
whose path is unique to the test, so clean-up (in finalisers, even on failure) only ever touches
what the test made: it kills only processes whose command line holds that directory, deletes
only its namespaces, and then asserts nothing is left. No address is added outside those
namespaces; the underlay uses 198.18.0.0/15, the fake guests 10.199.0.0/24 inside the overlay.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from ravel.host.bundle import build_zipapp

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
# the runtime must work with a bare interpreter (no venv); RAVEL_TEST_HOST_PYTHON picks another
PYTHON = os.environ.get("RAVEL_TEST_HOST_PYTHON") or (
    "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable)
_counter = itertools.count()

needs = []
if os.geteuid() != 0:
    needs.append("root")
for tool in ("ip", "bridge", "qemu-system-x86_64", "qemu-img"):
    if not shutil.which(tool):
        needs.append(tool)
if needs:
    pytestmark = [pytest.mark.e2e, pytest.mark.skip(reason="needs " + ", ".join(needs))]

# ICMP echo with an explicit size and, optionally, don't-fragment; exit 0 on a reply.
PING = r"""
import os, socket, struct, sys, time
dst, size, df, timeout = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "df", float(sys.argv[4])
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
if df:
    s.setsockopt(socket.IPPROTO_IP, 10, 2)  # IP_MTU_DISCOVER = IP_PMTUDISC_DO
ident = os.getpid() & 0xFFFF
def csum(b):
    b += b"\0" * (len(b) % 2)
    t = sum(struct.unpack("!%dH" % (len(b) // 2), b))
    t = (t >> 16) + (t & 0xFFFF)
    return ~(t + (t >> 16)) & 0xFFFF
payload = bytes(size)
pkt = struct.pack("!BBHHH", 8, 0, csum(struct.pack("!BBHHH", 8, 0, 0, ident, 1) + payload),
                  ident, 1) + payload
s.sendto(pkt, (dst, 0))
deadline = time.monotonic() + timeout
while time.monotonic() < deadline:
    s.settimeout(max(0.01, deadline - time.monotonic()))
    try:
        data, addr = s.recvfrom(65535)
    except socket.timeout:
        break
    ihl = (data[0] & 0xF) * 4
    kind, _, _, rid, _ = struct.unpack("!BBHHH", data[ihl:ihl + 8])
    if kind == 0 and rid == ident and addr[0] == dst:
        print(len(data) - ihl - 8)
        sys.exit(0)
sys.exit(1)
"""

# One broadcast ARP request; exit 0 when the owner of the address answers.
ARP = r"""
import socket, struct, sys, time
ifname, src, dst, timeout = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0806))
s.bind((ifname, 0))
mac = s.getsockname()[4]
s.send(b"\xff" * 6 + mac + b"\x08\x06" + struct.pack("!HHBBH", 1, 0x0800, 6, 4, 1) + mac
       + socket.inet_aton(src) + b"\0" * 6 + socket.inet_aton(dst))
deadline = time.monotonic() + timeout
while time.monotonic() < deadline:
    s.settimeout(max(0.01, deadline - time.monotonic()))
    try:
        frame = s.recv(2048)
    except socket.timeout:
        break
    if frame[12:14] == b"\x08\x06" and struct.unpack("!H", frame[20:22])[0] == 2 \
            and frame[28:32] == socket.inet_aton(dst):
        print(":".join("%02x" % b for b in frame[22:28]))
        sys.exit(0)
sys.exit(1)
"""


def sh(*argv, check=True, timeout=30, input=None):
    p = subprocess.run([str(a) for a in argv], capture_output=True, text=True, timeout=timeout,
                       input=input)
    if check and p.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, argv))} -> {p.returncode}: {p.stderr.strip()}")
    return p


class Lab:
    """Namespaces, files and runtime invocations of one test; ``close`` undoes all of it."""

    def __init__(self) -> None:
        self.prefix = f"rvt{os.getpid()}{next(_counter)}"
        self.tmp = Path(tempfile.mkdtemp(prefix=self.prefix + "-"))
        self.namespaces = []
        self.zipapp = self.tmp / "ravel-host.pyz"
        build_zipapp(self.zipapp)

    def ns(self, tag: str) -> str:
        name = f"{self.prefix}-{tag}"
        sh("ip", "netns", "add", name)
        self.namespaces.append(name)
        sh("ip", "-n", name, "link", "set", "lo", "up")
        return name

    def run_dir(self, host: str) -> str:
        return str(self.tmp / host / "run")

    def runtime(self, ns: str, cmd: str, doc=None, zipapp=False, timeout=90):
        """Run the runtime inside ``ns``; returns (exit status, JSON report, stderr)."""
        if zipapp:
            argv = ["ip", "netns", "exec", ns, PYTHON, str(self.zipapp), cmd]
        else:
            argv = ["ip", "netns", "exec", ns, "env", f"PYTHONPATH={REPO}", PYTHON, "-m",
                    "ravel.host", cmd]
        p = sh(*argv, check=False, timeout=timeout,
               input=json.dumps(doc) if doc is not None else None)
        try:
            report = json.loads(p.stdout)
        except ValueError:
            raise AssertionError(f"{cmd}: not JSON (exit {p.returncode}):\n{p.stdout}\n{p.stderr}")
        return p.returncode, report, p.stderr

    def apply(self, ns, doc, zipapp=False):
        rc, report, err = self.runtime(ns, "apply", doc, zipapp=zipapp)
        assert rc == 0 and report["errors"] == [], (rc, report, err)
        return report

    def links(self, ns) -> dict:
        return {i["ifname"]: i for i in json.loads(sh("ip", "-n", ns, "-j", "-d", "link",
                                                      "show").stdout)}

    def our_processes(self) -> list:
        """Live processes whose command line mentions this lab's directory (ours by design)."""
        found = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                cmd = Path(f"/proc/{entry}/cmdline").read_bytes()
            except OSError:
                continue
            if str(self.tmp).encode() in cmd:
                found.append(int(entry))
        return found

    def close(self) -> list:
        """Remove everything; returns what was still there before removal (should be [])."""
        leftovers = []
        for pid in self.our_processes():
            leftovers.append(f"process {pid}")
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 5
        while self.our_processes() and time.monotonic() < deadline:
            time.sleep(0.05)
        for name in reversed(self.namespaces):
            sh("ip", "netns", "del", name, check=False)
        shutil.rmtree(self.tmp, ignore_errors=True)
        listed = sh("ip", "netns", "list").stdout.split()
        left_ns = [n for n in listed if n.startswith(self.prefix + "-")]
        assert not left_ns, f"namespaces left behind: {left_ns}"
        assert not self.tmp.exists()
        assert not self.our_processes()
        return leftovers


@pytest.fixture
def lab():
    lab = Lab()
    try:
        yield lab
    finally:
        lab.close()


def wait_for(what, fn, timeout=10.0, interval=0.2):
    deadline = time.monotonic() + timeout
    while True:
        result = fn()
        if result:
            return result
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)


def ping(ns, dst, size=56, df=False, timeout=2.0) -> bool:
    p = sh("ip", "netns", "exec", ns, PYTHON, "-c", PING, dst, size, "df" if df else "-",
           timeout, check=False, timeout=timeout + 10)
    return p.returncode == 0


def ip_counter(ns, name) -> int:
    lines = [line.split() for line in sh("ip", "netns", "exec", ns, "cat",
                                         "/proc/net/snmp").stdout.splitlines()
             if line.startswith("Ip:")]
    return int(lines[1][lines[0].index(name)])


# -- two hosts, one overlay ---------------------------------------------------------------------

GUEST_MAC = {1: "52:54:00:aa:00:01", 2: "52:54:00:aa:00:02"}
UNDERLAY = {1: "198.18.0.11", 2: "198.18.0.12"}


def overlay_doc(lab, i, networks=("lan", "mgmt")) -> dict:
    other = 3 - i
    nets = []
    if "lan" in networks:
        nets.append({"name": "lan", "vni": 1001, "bridge": "rb1001", "vxlan": "rx1001",
                     "mtu": 1500, "peers": [UNDERLAY[other]],
                     "fdb": [{"mac": GUEST_MAC[other], "dst": UNDERLAY[other]}]})
    if "mgmt" in networks:
        nets.append({"name": "mgmt", "vni": 1002, "bridge": "rb1002", "vxlan": "rx1002",
                     "mtu": 1500, "peers": [UNDERLAY[other]], "fdb": []})
    return {
        "version": 1, "app": "demo", "host": f"host-{i}", "run_dir": lab.run_dir(f"h{i}"),
        "underlay": {"device": "eth0", "address": UNDERLAY[i], "mtu": 1550},
        "networks": nets,
        "taps": [{"name": "rt1a0", "bridge": "rb1001", "mtu": 1500}],
        "vms": [],
    }


def test_overlay_between_two_hosts(lab):
    # underlay: one bridge in its own namespace, each host attached by a veth (MTU 1500)
    u = lab.ns("u")
    sh("ip", "-n", u, "link", "add", "br0", "type", "bridge")
    hosts = {}
    for i in (1, 2):
        h = hosts[i] = lab.ns(f"h{i}")
        sh("ip", "-n", u, "link", "add", f"v{i}", "mtu", 9000, "type", "veth",
           "peer", "name", "eth0", "mtu", 1500, "netns", h)
        sh("ip", "-n", u, "link", "set", f"v{i}", "master", "br0", "up")
        sh("ip", "-n", h, "addr", "add", f"{UNDERLAY[i]}/15", "dev", "eth0")
        sh("ip", "-n", h, "link", "set", "eth0", "up")
    sh("ip", "-n", u, "link", "set", "br0", "mtu", 9000, "up")
    wait_for("underlay ping", lambda: ping(hosts[1], UNDERLAY[2], timeout=1))

    # apply: host 1 through `python3 -m ravel.host`, host 2 through the zipapp
    for i in (1, 2):
        report = lab.apply(hosts[i], overlay_doc(lab, i), zipapp=(i == 2))
        got = {(a["kind"], a["target"]) for a in report["actions"]}
        assert ("underlay.mtu", "eth0") in got and ("vxlan.create", "rx1001") in got
        assert report["converged"] is True
        links = lab.links(hosts[i])
        assert links["eth0"]["mtu"] == 1550
        vx = links["rx1001"]["linkinfo"]["info_data"]
        assert (vx["id"], vx["local"], vx["port"], vx["learning"]) == (
            1001, UNDERLAY[i], 4789, False)
        assert links["rx1001"]["master"] == "rb1001" and links["rt1a0"]["master"] == "rb1001"
        assert links["rb1001"]["linkinfo"]["info_data"]["mcast_snooping"] == 0
        assert oct(os.stat(lab.run_dir(f"h{i}")).st_mode & 0o777) == "0o700"

    # a fake guest per host: a veth into the host's bridge, far end in a small namespace
    guests = {}
    for i in (1, 2):
        g = guests[i] = lab.ns(f"g{i}")
        sh("ip", "-n", hosts[i], "link", "add", "gv", "type", "veth", "peer", "name", "eth0",
           "address", GUEST_MAC[i], "mtu", 1500, "netns", g)
        sh("ip", "-n", hosts[i], "link", "set", "gv", "master", "rb1001", "up")
        sh("ip", "-n", g, "addr", "add", f"10.199.0.{i}/24", "dev", "eth0")
        sh("ip", "-n", g, "link", "set", "eth0", "up")

    # broadcast: an ARP request from guest 1 is answered by guest 2 on the other host
    arp = wait_for("ARP reply across the overlay", lambda: sh(
        "ip", "netns", "exec", guests[1], PYTHON, "-c", ARP, "eth0", "10.199.0.1", "10.199.0.2",
        1.0, check=False, timeout=10).stdout.strip())
    assert arp == GUEST_MAC[2]
    neigh = sh("ip", "-n", guests[2], "neigh", "show", "10.199.0.1").stdout
    assert GUEST_MAC[1] in neigh  # guest 2 learnt guest 1 from the broadcast request

    # unicast, then a full-size don't-fragment frame with no outer fragmentation
    wait_for("cross-host ping", lambda: ping(guests[1], "10.199.0.2", timeout=1))
    frags = [ip_counter(hosts[i], "FragCreates") for i in (1, 2)]
    assert ping(guests[1], "10.199.0.2", size=1472, df=True)
    assert ping(guests[2], "10.199.0.1", size=1472, df=True)
    assert [ip_counter(hosts[i], "FragCreates") for i in (1, 2)] == frags
    assert not ping(guests[1], "10.199.0.2", size=1473, df=True, timeout=0.5)  # > guest MTU

    # idempotent: the same desired state again performs nothing
    for i in (1, 2):
        report = lab.apply(hosts[i], overlay_doc(lab, i), zipapp=(i == 2))
        assert report["actions"] == [] and report["pending"] == []
    rc, seen, _ = lab.runtime(hosts[1], "observe", overlay_doc(lab, 1))
    assert rc == 0 and seen["converged"] is True
    assert seen["fdb"]["rx1001"] == [["00:00:00:00:00:00", UNDERLAY[2]],
                                     [GUEST_MAC[2], UNDERLAY[2]]]

    # a network removed from the desired state loses its devices; the other keeps working
    report = lab.apply(hosts[1], overlay_doc(lab, 1, networks=("lan",)))
    assert sorted((a["kind"], a["target"]) for a in report["actions"]) == [
        ("bridge.delete", "rb1002"), ("router.nft", "ravel-demo"), ("vxlan.delete", "rx1002")]
    assert "rb1002" not in lab.links(hosts[1]) and "rx1002" not in lab.links(hosts[1])
    assert ping(guests[1], "10.199.0.2")

    # destroy: short form on host 1, the full document through the zipapp on host 2
    rc, report, err = lab.runtime(hosts[1], "destroy", {"app": "demo",
                                                        "run_dir": lab.run_dir("h1")})
    assert rc == 0 and report["converged"], (report, err)
    rc, report, err = lab.runtime(hosts[2], "destroy", overlay_doc(lab, 2), zipapp=True)
    assert rc == 0 and report["converged"], (report, err)
    for i in (1, 2):
        assert set(lab.links(hosts[i])) == {"lo", "eth0", "gv"}  # gv: the test's fake guest
        # the app's nft table (the fence around its tunnels) went with it
        assert sh("ip", "netns", "exec", hosts[i], "nft", "list", "tables").stdout.strip() == ""
        assert not os.path.exists(lab.run_dir(f"h{i}"))
        rc, report, _ = lab.runtime(hosts[i], "destroy", {"app": "demo",
                                                           "run_dir": lab.run_dir(f"h{i}")})
        assert rc == 0 and report["actions"] == []


# -- QEMU processes ---------------------------------------------------------------------------

def vm_doc(lab, mem="64", running=True, vms=True) -> dict:
    run = lab.run_dir("h")
    argv = ["qemu-system-x86_64", "-M", "q35", "-accel", "tcg", "-m", mem, "-S",
            "-display", "none", "-nodefaults", "-name", "web-1",
            "-daemonize", "-pidfile", f"{run}/web-1.pid",
            "-qmp", f"unix:{run}/web-1.qmp,server=on,wait=off",
            "-netdev", "tap,id=n0,ifname=rt1a0,script=no,downscript=no",
            "-device", "e1000,netdev=n0,mac=52:54:00:00:01:01",
            "-drive", f"file={run}/web-1-disk0.qcow2,if=none,id=d0,format=qcow2",
            "-device", "virtio-blk-pci,drive=d0",
            "-drive", f"file={run}/web-1-disk1.qcow2,if=none,id=d1,format=qcow2",
            "-device", "virtio-blk-pci,drive=d1"]
    vm = {"name": "web-1", "running": running, "argv": argv,
          "pidfile": f"{run}/web-1.pid", "qmp": f"{run}/web-1.qmp",
          "disks": [{"path": f"{run}/web-1-disk0.qcow2", "base": str(lab.tmp / "base.qcow2"),
                     "base_format": "qcow2"},
                    {"path": f"{run}/web-1-disk1.qcow2", "size_mib": 16}]}
    return {
        "version": 1, "app": "demo", "host": "host-1", "run_dir": run,
        "underlay": {"device": "eth0", "address": "198.18.0.11", "mtu": 1550},
        "networks": [{"name": "lan", "vni": 1001, "bridge": "rb1001", "vxlan": "rx1001",
                      "mtu": 1500, "peers": [], "fdb": []}],
        "taps": [{"name": "rt1a0", "bridge": "rb1001", "mtu": 1500}],
        "vms": [vm] if vms else [],
    }


def qemu_pid(lab) -> int:
    pid = int(Path(lab.run_dir("h"), "web-1.pid").read_text())
    cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    assert cmd[0] == b"qemu-system-x86_64" and str(lab.tmp).encode() in b" ".join(cmd)
    return pid


def gone(pid) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] in "ZX"
    except OSError:
        return True


def test_qemu_lifecycle(lab):
    h = lab.ns("h")
    sh("ip", "-n", h, "link", "add", "eth0", "type", "veth", "peer", "name", "eth0p")
    sh("ip", "-n", h, "addr", "add", "198.18.0.11/15", "dev", "eth0")
    sh("ip", "-n", h, "link", "set", "eth0", "up")
    sh("qemu-img", "create", "-f", "qcow2", lab.tmp / "base.qcow2", "32M")
    run = Path(lab.run_dir("h"))

    # start: disks created, QEMU daemonized, still up after the runtime exited
    report = lab.apply(h, vm_doc(lab))
    kinds = [(a["kind"], a["target"]) for a in report["actions"]]
    assert kinds[-3:] == [("disk.create", f"{run}/web-1-disk0.qcow2"),
                          ("disk.create", f"{run}/web-1-disk1.qcow2"), ("vm.start", "web-1")]
    pid = qemu_pid(lab)
    assert report["vms"] == {"web-1": {"running": True, "pid": pid}}
    assert not gone(pid)
    info = json.loads(sh("qemu-img", "info", "-U", "--output=json",
                         run / "web-1-disk0.qcow2").stdout)
    assert info["backing-filename"] == str(lab.tmp / "base.qcow2")
    assert "LOWER_UP" in lab.links(h)["rt1a0"]["flags"]  # QEMU holds the tap
    disk_before = (run / "web-1-disk1.qcow2").stat().st_ino

    assert lab.apply(h, vm_doc(lab))["actions"] == []

    # the same through the zipapp: still nothing to do
    assert lab.apply(h, vm_doc(lab), zipapp=True)["actions"] == []

    # changed argv: stopped and started again, disks untouched
    report = lab.apply(h, vm_doc(lab, mem="96"))
    assert [(a["kind"], a["reason"]) for a in report["actions"]] == [
        ("vm.stop", "configuration changed"), ("vm.start", "configuration changed")]
    assert "QMP" in report["actions"][0]["detail"]
    assert gone(pid)
    pid2 = qemu_pid(lab)
    assert pid2 != pid and not gone(pid2)
    assert (run / "web-1-disk1.qcow2").stat().st_ino == disk_before

    # running=false: QMP quit, bounded
    report = lab.apply(h, vm_doc(lab, mem="96", running=False))
    assert [(a["kind"], a["reason"]) for a in report["actions"]] == [("vm.stop", "running=false")]
    assert report["actions"][0]["detail"].startswith("quit via QMP")
    assert gone(pid2) and report["vms"]["web-1"] == {"running": False, "pid": None}
    assert lab.apply(h, vm_doc(lab, mem="96", running=False))["actions"] == []

    # a QEMU that fails reports its stderr and a non-zero exit
    bad = vm_doc(lab)
    bad["vms"][0]["argv"] = bad["vms"][0]["argv"] + ["-no-such-option"]
    rc, report, err = lab.runtime(h, "apply", bad)
    assert rc == 1 and "-no-such-option" in report["errors"][0] and "invalid option" in err
    assert report["converged"] is False and report["pending"][0]["kind"] == "vm.start"

    # invalid input: exit 2 and every problem named
    rc, report, err = lab.runtime(h, "apply", {"version": 1, "app": "demo"})
    assert rc == 2 and "run_dir: is required" in report["errors"]

    # a VM removed from the desired state: stopped, its files deleted
    lab.apply(h, vm_doc(lab))
    pid3 = qemu_pid(lab)
    report = lab.apply(h, vm_doc(lab, vms=False))
    assert [(a["kind"], a["target"]) for a in report["actions"]] == [
        ("vm.stop", "web-1"), ("vm.remove", "web-1")]
    assert gone(pid3)
    assert sorted(p.name for p in run.iterdir()) == ["owned.json"]

    # destroy with a running VM: nothing of the app is left, and a second destroy is a no-op
    lab.apply(h, vm_doc(lab))
    pid4 = qemu_pid(lab)
    rc, report, err = lab.runtime(h, "destroy", {"app": "demo", "run_dir": str(run)})
    assert rc == 0 and report["converged"], (report, err)
    assert [a["kind"] for a in report["actions"]] == [
        "router.nft.delete", "vm.stop", "vm.remove", "link.delete", "link.delete", "link.delete",
        "run_dir.delete"]
    assert gone(pid4) and not run.exists()
    assert set(lab.links(h)) == {"lo", "eth0", "eth0p"}
    assert lab.our_processes() == []
    rc, report, _ = lab.runtime(h, "destroy", {"app": "demo", "run_dir": str(run)})
    assert rc == 0 and report["actions"] == []


def test_facts_probes_kvm_and_reports_qemu(lab):
    rc, facts, err = lab.runtime(lab.ns("f"), "facts", zipapp=True)
    assert rc == 0, err
    assert set(facts) >= {"kvm", "qemu", "cpus", "memory_mib", "kernel"}
    assert isinstance(facts["kvm"]["works"], bool) and facts["kvm"]["detail"]
    assert facts["qemu"]["path"].endswith("qemu-system-x86_64")
    assert facts["qemu"]["version"].count(".") >= 1
    assert facts["cpus"] >= 1 and facts["memory_mib"] > 0
