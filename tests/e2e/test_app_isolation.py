"""Two apps of one RAVEL_HOME never reach each other, even from a hostile guest; and each host's
VMs run with the accelerator its own KVM probe settled.

One lab, two apps, reached over SSH (so this machine has its underlay address 198.19.255.254 and
every host runs an sshd): app EVIL has a guest on a `nat: true` network; app VICTIM has a guest
on a pure layer-2 network (its host has no router, so nothing but the fence protects its
tunnel). A namespace on the underlay plays the outside world (198.19.254.1). The hostile guest
sends hand-made VXLAN packets (guest/udpsend.c) carrying an ARP request for the victim's
address: a guest that hears one learns the forged sender, so the victim's ARP table says
whether a frame got onto its network. Each refusal is checked against a control that shows the
same packet or connection works where the fence does not stand.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import signal
import socket
import sqlite3
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import GUEST, Ravel, force_cleanup, leftovers, wait_until
from guestlib import Console

from ravel.host import kvm
from ravel.host.netconf import table_name
from ravel.paths import paths
from ravel.providers.local import ROOT_ADDRESS

EVIL = f"isoevil{os.getpid()}"
VICTIM = f"isovictim{os.getpid()}"
OUTSIDE = "198.19.254.1"  # the fake outside world's address on the underlay (no host gets it)
VICTIM_IP = "10.82.0.2"
FORGED_MAC = "02:66:6f:72:67:65"

BLUEPRINT_EVIL = """\
name: evil
networks:
  out: {subnet: 10.81.0.0/24, gateway: 10.81.0.1, nat: true}
defaults:
  memory: 160MiB
  boot: {kernel: GUEST/vmlinuz, initrd: GUEST/initrd.img, cmdline: console=ttyS0 quiet}
vms:
  evil:
    nics: [{network: out, ip: 10.81.0.2}]
"""

BLUEPRINT_VICTIM = """\
name: victim
networks:
  lan: {subnet: 10.82.0.0/24}
defaults:
  memory: 160MiB
  boot: {kernel: GUEST/vmlinuz, initrd: GUEST/initrd.img, cmdline: console=ttyS0 quiet}
vms:
  victim:
    nics: [{network: lan, ip: 10.82.0.2}]
"""

OUTSIDE_SERVER = r"""
import socket, sys, threading
def udp():
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.bind(("0.0.0.0", 4789))
    while True:
        data, peer = u.recvfrom(65535)
        with open(sys.argv[1], "a") as f:
            f.write(f"{peer[0]} {data.hex()}\n")
threading.Thread(target=udp, daemon=True).start()
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", 8000)); s.listen(8); s.settimeout(600)
while True:
    c, peer = s.accept(); c.sendall(f"you are {peer[0]}\n".encode()); c.close()
"""


class Outside:
    """A namespace on the underlay playing the outside world: TCP 8000 says who connected, UDP
    4789 writes what it receives (source and payload in hex) to a file."""

    def __init__(self, underlay: str, workdir: Path) -> None:
        self.ns = f"iso-out{os.getpid()}"
        self.veth = f"iso{os.getpid()}"[:15]
        self.received = workdir / "outside-udp.txt"
        self.received.touch()
        self.server: subprocess.Popen | None = None
        self.ip("netns", "add", self.ns)
        self.ip("-n", self.ns, "link", "set", "lo", "up")
        self.ip("-n", underlay, "link", "add", self.veth, "type", "veth", "peer", "name", "eth0", "netns", self.ns)
        self.ip("-n", underlay, "link", "set", self.veth, "master", "ul0", "up")
        self.ip("-n", self.ns, "addr", "add", f"{OUTSIDE}/15", "dev", "eth0")
        self.ip("-n", self.ns, "link", "set", "eth0", "up")
        self.server = subprocess.Popen(["ip", "netns", "exec", self.ns, sys.executable, "-c", OUTSIDE_SERVER,
                                        str(self.received)], stdin=subprocess.DEVNULL)

    @staticmethod
    def ip(*args: str) -> None:
        subprocess.run(["ip", *args], check=True, capture_output=True, timeout=30)

    def python(self, code: str, timeout: float = 30) -> str:
        p = subprocess.run(["ip", "netns", "exec", self.ns, sys.executable, "-c", code], capture_output=True,
                           text=True, timeout=timeout, check=False)
        assert p.returncode == 0, p.stderr
        return p.stdout

    def send(self, host: str, payload: str) -> None:
        self.python(f"import socket; socket.socket(socket.AF_INET, socket.SOCK_DGRAM)"
                    f".sendto(bytes.fromhex({payload!r}), ({host!r}, 4789))")

    def close(self) -> None:
        if self.server is not None:
            self.server.kill()
            self.server.wait(timeout=10)
        subprocess.run(["ip", "netns", "del", self.ns], capture_output=True, timeout=30, check=False)


class Lab(Ravel):
    consoles: dict[tuple[str, str], tuple[str, str]]
    outside: Outside

    def console(self, app: str, vm: str) -> Console:
        # `ravel status` observes every host over SSH: ask it once per VM, not per command
        if (app, vm) not in self.consoles:
            self.consoles.update({(app, n): (v["console"], v["log"]) for n, v in self.status(app).items()})
        sock, log = self.consoles[(app, vm)]
        return Console(sock, log=log)

    def sh(self, app: str, vm: str, cmd: str, timeout: float = 30) -> tuple[int, str]:
        with self.console(app, vm) as con:
            return con.run(cmd, timeout=timeout)

    def host(self, app: str) -> dict:
        """The app's one host record: name, address, accel and its extra (desired, facts)."""
        db = sqlite3.connect(self.home / "state" / "state.db")
        try:
            (row,) = db.execute("SELECT name, address, accel, extra FROM hosts WHERE app=?", (app,)).fetchall()
        finally:
            db.close()
        return {"name": row[0], "address": row[1], "accel": row[2], **json.loads(row[3])}

    def netns(self, app: str, *argv: str) -> str:
        p = subprocess.run(["ip", "netns", "exec", f"rv-{app}-{self.host(app)['name']}", *argv],
                           capture_output=True, text=True, timeout=30, check=False)
        assert p.returncode == 0, p.stderr
        return p.stdout


def sshd_pids(app: str) -> list[int]:
    found = []
    for d in Path("/proc").iterdir():
        try:
            cmd = (d / "cmdline").read_bytes()
        except OSError:
            continue
        if d.name.isdigit() and b"sshd" in cmd and f"/{app}/sshd-".encode() in cmd:
            found.append(int(d.name))
    return found


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    home = tmp_path_factory.mktemp("home")
    r = Lab(home)
    r.consoles = {}
    outside = None
    try:
        for app, text in ((EVIL, BLUEPRINT_EVIL), (VICTIM, BLUEPRINT_VICTIM)):
            bp = home / f"{app}.yaml"
            bp.write_text(text.replace("GUEST", str(GUEST)))
            p = r("publish", str(bp), "--name", app, "--transport", "ssh", "--wait", "--timeout", "180")
            assert "all VMs ready" in p.stdout
        outside = r.outside = Outside(f"rvul-{paths({'RAVEL_HOME': str(home)}).tag}", home)
        yield r
    finally:
        if outside is not None:
            outside.close()
        for app in (EVIL, VICTIM):
            r("destroy", app, "--yes", check=False)
        link = f"rvul{paths({'RAVEL_HOME': str(home)}).tag}"
        left = leftovers(EVIL, home) + leftovers(VICTIM, home)
        left += [f"sshd pid {p}" for p in sshd_pids(EVIL) + sshd_pids(VICTIM)]
        if subprocess.run(["ip", "link", "show", "dev", link], capture_output=True, check=False).returncode == 0:
            left.append(f"link {link}")
        for app in (EVIL, VICTIM):
            for pid in sshd_pids(app):
                os.kill(pid, signal.SIGKILL)
            force_cleanup(app, home)
        assert not left, f"left behind: {left}"


# -- helpers -------------------------------------------------------------------------------------

def forged_vxlan(vni: int, sender_ip: str, target_ip: str = VICTIM_IP) -> str:
    """A VXLAN packet (as its UDP payload, in hex) carrying a broadcast ARP request from a
    made-up sender: 'who has target_ip? tell sender_ip at FORGED_MAC'."""
    mac = bytes.fromhex(FORGED_MAC.replace(":", ""))
    vxlan = struct.pack("!II", 0x08000000, vni << 8)
    arp = (struct.pack("!HHBBH", 1, 0x0800, 6, 4, 1) + mac + ipaddress.IPv4Address(sender_ip).packed
           + bytes(6) + ipaddress.IPv4Address(target_ip).packed)
    frame = b"\xff" * 6 + mac + b"\x08\x06" + arp
    return (vxlan + frame.ljust(60, b"\0")).hex()


def learned(r: Lab, sender_ip: str) -> bool:
    """Whether the victim guest heard an ARP request from `sender_ip` (it learns the sender)."""
    rc, out = r.sh(VICTIM, "victim", "cat /proc/net/arp")
    assert rc == 0, out
    return any(line.split()[0] == sender_ip and FORGED_MAC in line for line in out.splitlines()[1:])


def counter(ruleset: str, rule: str) -> int:
    m = re.search(re.escape(rule) + r" counter packets (\d+) bytes \d+ drop", ruleset)
    assert m, f"no counted rule {rule!r} in:\n{ruleset}"
    return int(m.group(1))


def victim_vni(r: Lab) -> int:
    (net,) = r.host(VICTIM)["desired"]["networks"]
    return net["vni"]


def rx_packets(r: Lab) -> int:
    (net,) = r.host(VICTIM)["desired"]["networks"]
    return int(r.netns(VICTIM, "cat", f"/sys/class/net/{net['vxlan']}/statistics/rx_packets"))


# -- the accelerator -----------------------------------------------------------------------------

def test_each_host_runs_what_its_own_kvm_probe_allows(lab):
    works, _ = kvm.probe()  # the same probe, run here: this machine is every local host
    want = "kvm" if works else "tcg"
    for app, vm in ((EVIL, "evil"), (VICTIM, "victim")):
        host = lab.host(app)
        assert host["facts"]["kvm"]["works"] is works and host["facts"]["ref"] == f"rv-{app}-{host['name']}"
        assert host["accel"] == want
        assert lab.status(app)[vm]["accel"] == want  # what `ravel status` shows
        argv = host["desired"]["vms"][0]["argv"]
        assert argv[argv.index("-accel") + 1].startswith("tcg,thread=multi" if want == "tcg" else "kvm")


def test_publishing_again_does_not_probe_again(lab):
    db = sqlite3.connect(lab.home / "state" / "state.db")
    try:
        extra = json.loads(db.execute("SELECT extra FROM hosts WHERE app=?", (VICTIM,)).fetchone()[0])
        extra["facts"]["kvm"]["detail"] = "recorded by the first publish"
        with db:
            db.execute("UPDATE hosts SET extra=? WHERE app=?", (json.dumps(extra), VICTIM))
    finally:
        db.close()
    p = lab("publish", str(lab.home / f"{VICTIM}.yaml"), "--name", VICTIM)
    assert "nothing to do" in p.stdout
    assert lab.host(VICTIM)["facts"]["kvm"]["detail"] == "recorded by the first publish"


# -- the fences ----------------------------------------------------------------------------------

def test_vxlan_from_outside_the_app_never_reaches_its_guest(lab):
    """The victim's host has no router: its inet table alone drops VXLAN from non-peers."""
    host = lab.host(VICTIM)
    vni = victim_vni(lab)
    table = table_name(VICTIM)
    rule = "udp dport 4789 ip saddr != @peers"
    before = counter(lab.netns(VICTIM, "nft", "list", "table", "inet", table), rule)
    rx = rx_packets(lab)
    lab.outside.send(host["address"], forged_vxlan(vni, "10.82.0.66"))
    assert counter(lab.netns(VICTIM, "nft", "list", "table", "inet", table), rule) == before + 1
    assert rx_packets(lab) == rx  # never decapsulated

    # control: without the fence the very same packet does get onto the victim's network...
    lab.netns(VICTIM, "nft", "delete", "table", "inet", table)
    lab.outside.send(host["address"], forged_vxlan(vni, "10.82.0.67"))
    wait_until(lambda: learned(lab, "10.82.0.67"), 10, "the victim to hear the unfenced ARP request", step=1)
    assert not learned(lab, "10.82.0.66")  # ... and the fenced one never did
    # ... and publishing again puts the fence back
    p = lab("publish", str(lab.home / f"{VICTIM}.yaml"), "--name", VICTIM)
    assert "nothing to do" not in p.stdout and "1 change" in p.stdout + p.stderr, p.stdout + p.stderr
    lab.outside.send(host["address"], forged_vxlan(vni, "10.82.0.68"))
    assert counter(lab.netns(VICTIM, "nft", "list", "table", "inet", table), rule) == 1
    time.sleep(1.0)
    assert not learned(lab, "10.82.0.68")


def test_a_nat_guest_cannot_inject_frames_into_another_app(lab):
    victim_host = lab.host(VICTIM)["address"]
    evil_host = lab.host(EVIL)["address"]
    payload = forged_vxlan(victim_vni(lab), "10.82.0.77")
    fence_rule = 'oifname "ul0" ip daddr @fence'
    before = counter(lab.netns(EVIL, "nft", "list", "table", "inet", table_name(EVIL)), fence_rule)
    rc, out = lab.sh(EVIL, "evil", f"udpsend {victim_host} 4789 {payload}")
    assert rc == 0 and "sent 68 bytes" in out, out
    # control: the same datagram to the outside world arrives, masqueraded, byte for byte
    rc, out = lab.sh(EVIL, "evil", f"udpsend {OUTSIDE} 4789 {payload}")
    assert rc == 0, out
    got = wait_until(lambda: lab.outside.received.read_text().strip(), 10, "the outside world to get it")
    assert f"{evil_host} {payload}" in got.splitlines()
    # dropped at the guest's own host, before it left for the underlay
    assert counter(lab.netns(EVIL, "nft", "list", "table", "inet", table_name(EVIL)), fence_rule) == before + 1
    assert not learned(lab, "10.82.0.77")


def test_a_nat_guest_reaches_neither_this_machine_nor_any_host(lab):
    victim_host = lab.host(VICTIM)["address"]
    evil_host = lab.host(EVIL)["address"]
    # a service of this machine on its underlay address (as one listening on 0.0.0.0 would be)
    server = socket.socket()
    # every RAVEL_HOME in SSH mode has its own link with this address (another test's lab may be
    # up beside this one): answer through this lab's, as ravel's own connections do
    server.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, f"rvul{paths({'RAVEL_HOME': str(lab.home)}).tag}".encode())
    server.bind((ROOT_ADDRESS, 0))
    server.listen(4)
    server.settimeout(0.5)
    port = server.getsockname()[1]
    try:
        # control: the outside world reaches this machine's service and both hosts' sshd
        out = lab.outside.python(f"""
import socket
for addr, port in (({ROOT_ADDRESS!r}, {port}), ({victim_host!r}, 22), ({evil_host!r}, 22)):
    s = socket.create_connection((addr, port), timeout=5)
    s.settimeout(5)
    print(addr, port, "OPEN", s.recv(64)[:7] if port == 22 else b"")
""")
        assert out.count("OPEN") == 3 and out.count("SSH-2.0") == 2, out
        server.accept()[0].close()
        # the guest reaches the outside world...
        rc, out = lab.sh(EVIL, "evil", f"nc -w 5 {OUTSIDE} 8000 </dev/null")
        assert rc == 0 and out.strip() == f"you are {evil_host}", out
        # ... and nothing of ravel's: this machine, another app's host, its own host
        for addr, p in ((ROOT_ADDRESS, port), (victim_host, 22), (evil_host, 22)):
            # (a connection that opened would hang nc: `timeout` ends it, with another status)
            rc, out = lab.sh(EVIL, "evil", f"timeout 6 nc -w 3 {addr} {p} </dev/null; echo rc=$?")
            assert "SSH-" not in out and out.strip().endswith("rc=1"), (addr, p, out)
        with pytest.raises(socket.timeout):
            server.accept()  # nothing got through to this machine
    finally:
        server.close()
