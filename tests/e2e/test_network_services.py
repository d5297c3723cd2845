"""Network services inside an app, with real guests: fixed DHCP leases, DNS for VM names,
routing between networks through each host's gateway (and not where the blueprint turns it
off), a stateful allow list across hosts, NAT egress to a namespace that plays the internet,
exposed services on 127.0.0.1, a guest's own DHCP server, and two apps with the same names and
subnets that never meet. One lab for the module; destroyed at the end with a check that no
relay, dnsmasq, namespace or QEMU is left.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from conftest import GUEST, Ravel, force_cleanup, leftovers, namespaces, wait_until
from ravel.paths import paths
from ravel.providers import relay

APP = f"netsvc{os.getpid()}"
APP2 = f"netsvc2x{os.getpid()}"
INTERNET = "198.19.254.1"  # the fake internet's address on the underlay (no host gets it)
HOST_PORT = 40000 + os.getpid() % 20000  # the fixed host_port of web-1's 9090

BLUEPRINT = """\
name: netsvc
networks:
  front: {subnet: 10.61.0.0/24, gateway: 10.61.0.1, dhcp: true, dns: true, nat: true}
  back: {subnet: 10.62.0.0/24, gateway: 10.62.0.1, dhcp: true, dns: true}
  lan: {subnet: 10.63.0.0/24, gateway: 10.63.0.1}
routing:
  deny: [[front, lan]]
firewall:
  allow:
    - {from: back, to: front, protocol: tcp, ports: [8080]}
defaults:
  memory: 160MiB
  boot: {kernel: GUEST/vmlinuz, initrd: GUEST/initrd.img, cmdline: console=ttyS0 quiet}
vms:
  web-1:
    nics: [{network: front}]
    services: [{port: 8080}, {port: 9090, host_port: HOST_PORT}]
  db:
    nics: [{network: back, ip: 10.62.0.21}]
  srv:
    nics: [{network: lan, ip: 10.63.0.2}]
  cli:
    nics: [{network: lan}]
placement:
  host_types: [local-small]
  anti_affinity: [[web-1, db], [srv, cli]]
"""

# the same names and subnets in a second app: only web-1 (front) and an empty back
BLUEPRINT2 = """\
name: netsvc
networks:
  front: {subnet: 10.61.0.0/24, gateway: 10.61.0.1, dhcp: true, dns: true, nat: true}
  back: {subnet: 10.62.0.0/24, gateway: 10.62.0.1, dhcp: true, dns: true}
defaults:
  memory: 160MiB
  boot: {kernel: GUEST/vmlinuz, initrd: GUEST/initrd.img, cmdline: console=ttyS0 quiet}
vms:
  web-1:
    nics: [{network: front}]
    services: [{port: 8080}]
"""

SERVER = r"""
import socket
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", 8000)); s.listen(8); s.settimeout(600)
while True:
    c, peer = s.accept(); c.sendall(f"you are {peer[0]}\n".encode()); c.close()
"""


class FakeInternet:
    """A namespace on the app's underlay, playing the internet: a TCP server at 198.19.254.1:8000
    that tells each client the address it came from."""

    def __init__(self, underlay: str) -> None:
        self.ns = f"netsvc-inet{os.getpid()}"
        self.veth = f"nsi{os.getpid()}"[:15]
        self.server: subprocess.Popen | None = None
        ip = lambda *a: subprocess.run(["ip", *a], check=True, capture_output=True, timeout=30)  # noqa: E731
        ip("netns", "add", self.ns)
        ip("-n", self.ns, "link", "set", "lo", "up")
        ip("-n", underlay, "link", "add", self.veth, "type", "veth", "peer", "name", "eth0", "netns", self.ns)
        ip("-n", underlay, "link", "set", self.veth, "master", "ul0", "up")
        ip("-n", self.ns, "addr", "add", f"{INTERNET}/15", "dev", "eth0")
        ip("-n", self.ns, "link", "set", "eth0", "up")
        self.server = subprocess.Popen(["ip", "netns", "exec", self.ns, sys.executable, "-c", SERVER],
                                       stdin=subprocess.DEVNULL)

    def run(self, *argv: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["ip", "netns", "exec", self.ns, *argv], capture_output=True, text=True,
                              timeout=timeout)

    def close(self) -> None:
        if self.server is not None:
            self.server.kill()
            self.server.wait(timeout=10)
        subprocess.run(["ip", "netns", "del", self.ns], capture_output=True, timeout=30)


def relay_pids(app: str) -> list[int]:
    """Live relay processes of `app` (their --tag is ravel/<state>/<app>/...)."""
    out = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            cmd = (d / "cmdline").read_bytes().decode(errors="replace").split("\0")
        except OSError:
            continue
        if len(cmd) > 2 and cmd[1] == relay.__file__ and any(f"/{app}/" in c for c in cmd):
            out.append(int(d.name))
    return out


def dnsmasq_pids(app: str) -> list[int]:
    out = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            cmd = (d / "cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if cmd.startswith("dnsmasq\0") and f"/{app}/" in cmd:
            out.append(int(d.name))
    return out


def loopback_listeners(pids: list[int]) -> set[int]:
    """TCP ports these processes listen on, in this (the root) namespace."""
    inodes = set()
    for pid in pids:
        fd_dir = Path(f"/proc/{pid}/fd")
        for fd in fd_dir.iterdir():
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            m = re.match(r"socket:\[(\d+)\]", target)
            if m:
                inodes.add(m.group(1))
    ports = set()
    for line in Path("/proc/self/net/tcp").read_text().splitlines()[1:]:
        f = line.split()
        if f[3] == "0A" and f[9] in inodes:  # LISTEN
            ports.add(int(f[1].split(":")[1], 16))
    return ports


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    home = tmp_path_factory.mktemp("home")
    bp = home / "netsvc.yaml"
    bp.write_text(BLUEPRINT.replace("GUEST", str(GUEST)).replace("HOST_PORT", str(HOST_PORT)))
    r = Ravel(home)
    inet = None
    try:
        p = r("publish", str(bp), "--name", APP, "--wait", "--timeout", "240")
        assert "all VMs ready" in p.stdout
        inet = FakeInternet(f"rvul-{paths({'RAVEL_HOME': str(home)}).tag}")
        yield r, inet, home
    finally:
        if inet is not None:
            inet.close()
        for app in (APP, APP2):
            r("destroy", app, "--yes", check=False)
        left = leftovers(APP, home) + leftovers(APP2, home)
        left += [f"relay pid {p}" for p in relay_pids(APP) + relay_pids(APP2)]
        left += [f"dnsmasq pid {p}" for p in dnsmasq_pids(APP) + dnsmasq_pids(APP2)]
        for app in (APP, APP2):
            force_cleanup(app, home)
            for pid in relay_pids(app) + dnsmasq_pids(app):
                os.kill(pid, signal.SIGKILL)
        assert not left, f"left behind: {left}"


def sh(r: Ravel, vm: str, cmd: str, app: str = APP, timeout: float = 30) -> tuple[int, str]:
    with r.console(app, vm) as con:
        return con.run(cmd, timeout=timeout)


def ok(r: Ravel, vm: str, cmd: str, app: str = APP, timeout: float = 30) -> str:
    with r.console(app, vm) as con:
        return con.check(cmd, timeout=timeout)


def get(port: int, timeout: float = 10) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=timeout) as resp:
        return resp.read().decode()


def test_every_guest_gets_its_fixed_lease(lab):
    r, _, _ = lab
    st = r.status(APP)
    web = st["web-1"]["ips"]
    assert len(web) == 1 and web[0].startswith("10.61.0.")  # assigned by ravel, shown in status
    assert st["db"]["ips"] == ["10.62.0.21/24"]
    assert st["cli"]["ips"] == []  # lan has no DHCP from ravel
    for vm, ip, gw in (("web-1", web[0], "10.61.0.1"), ("db", "10.62.0.21/24", "10.62.0.1")):
        out = ok(r, vm, "ip -o -4 addr show dev eth0; ip route; cat /etc/resolv.conf; "
                        "cat /run/udhcpc.eth0.log; cat /sys/class/net/eth0/mtu")
        assert f"inet {ip} " in out, out
        assert f"lease of {ip.split('/')[0]} obtained from {gw}" in out  # by DHCP, not told
        assert f"default via {gw} dev eth0" in out
        assert f"nameserver {gw}" in out and f"search {APP}.lab" in out
        assert out.strip().endswith("1500")


def test_names_resolve_inside_the_app_and_nothing_else_does(lab):
    r, _, _ = lab
    web_ip = r.status(APP)["web-1"]["ips"][0].split("/")[0]
    out = ok(r, "web-1", f"nslookup db; nslookup db.{APP}.lab; nslookup web-1; ping -c 1 -W 3 db")
    assert out.count("Address: 10.62.0.21") == 2 and f"Address: {web_ip}" in out
    assert "1 packets received" in out
    rc, out = sh(r, "db", "time nslookup nosuch.example.com; time nslookup nosuch")
    assert rc != 0 and out.count("NXDOMAIN") >= 2
    for took in re.findall(r"real\s+(\d+)m\s*([\d.]+)s", out):
        assert int(took[0]) == 0 and float(took[1]) < 2.0, out  # an answer, not a timeout


def test_routing_through_the_gateway_except_where_turned_off(lab):
    r, _, _ = lab
    st = r.status(APP)
    assert st["web-1"]["host"] != st["db"]["host"]  # routed on one host, answered on another
    out = ok(r, "web-1", "ping -c 2 -W 3 10.62.0.21")
    assert "2 packets received" in out and "ttl=63" in out  # one routed hop
    assert "1 packets received" in ok(r, "db", "ping -c 1 -W 3 10.63.0.2")  # back <-> lan routed
    rc, out = sh(r, "web-1", "ping -c 2 -W 2 10.63.0.2")  # front <-> lan: routing.deny
    assert rc != 0 and "0 packets received" in out


def test_allow_list_is_stateful_across_hosts(lab):
    r, _, _ = lab
    web_ip = r.status(APP)["web-1"]["ips"][0].split("/")[0]
    ok(r, "web-1", "mkdir -p /www /www2 && echo hello from web-1 >/www/index.html && "
                   "echo undeclared >/www2/index.html && httpd -p 8080 -h /www && httpd -p 9090 -h /www && "
                   "httpd -p 8081 -h /www2")
    req = 'printf "GET / HTTP/1.0\\r\\n\\r\\n" | nc -w 3 {ip} {port} >/tmp/out; cat /tmp/out'
    # back -> front: only tcp/8080, yet the replies come back (tracked on both hosts)
    assert "hello from web-1" in ok(r, "db", req.format(ip=web_ip, port=8080))
    rc, out = sh(r, "db", req.format(ip=web_ip, port=8081) + "; grep -q undeclared /tmp/out")
    assert rc != 0, out
    rc, out = sh(r, "db", f"ping -c 1 -W 2 {web_ip}")
    assert rc != 0
    # front -> back is not restricted
    assert "1 packets received" in ok(r, "web-1", "ping -c 1 -W 3 10.62.0.21")


def test_declared_services_answer_on_loopback_and_nothing_else_does(lab):
    r, _, _ = lab
    ok(r, "web-1", "mkdir -p /www && echo hello from web-1 >/www/index.html; "
                   "pidof httpd >/dev/null || { httpd -p 8080 -h /www; httpd -p 9090 -h /www; }")
    services = r.status(APP)["web-1"]["services"]
    ports = {int(m.group(2)): int(m.group(1)) for m in map(re.compile(r"127\.0\.0\.1:(\d+)->(\d+)/tcp").match, services)}
    assert set(ports) == {8080, 9090} and ports[9090] == HOST_PORT, services
    assert "hello from web-1" in wait_until(lambda: _try(get, ports[8080]), 20, "the 8080 relay")
    assert "hello from web-1" in get(HOST_PORT)
    # the app's relays listen on exactly the declared services' ports: 8081 has none
    assert loopback_listeners(relay_pids(APP)) == set(ports.values())
    assert all(s["services"] == [] for name, s in r.status(APP).items() if name != "web-1")


def test_publishing_again_changes_nothing_and_keeps_the_ports(lab):
    r, _, home = lab
    before = {name: s["services"] for name, s in r.status(APP).items()}
    pids = sorted(relay_pids(APP) + dnsmasq_pids(APP))
    p = r("publish", str(home / "netsvc.yaml"), "--name", APP)
    assert "nothing to do" in p.stdout
    assert {name: s["services"] for name, s in r.status(APP).items()} == before
    assert sorted(relay_pids(APP) + dnsmasq_pids(APP)) == pids


def _try(fn, *args):
    try:
        return fn(*args)
    except OSError:
        return None


def test_a_guest_dhcp_server_serves_another_guest(lab):
    r, _, _ = lab
    st = r.status(APP)
    assert st["srv"]["host"] != st["cli"]["host"]  # the DHCP exchange crosses the tunnel
    ok(r, "srv", 'printf "start 10.63.0.100\\nend 10.63.0.110\\ninterface eth0\\n'
                 'lease_file /run/udhcpd.leases\\noption subnet 255.255.255.0\\noption router 10.63.0.1\\n" '
                 ">/etc/udhcpd.conf && touch /run/udhcpd.leases && udhcpd /etc/udhcpd.conf")

    def leased() -> str | None:
        rc, out = sh(r, "cli", "ip -o -4 addr show dev eth0; cat /run/udhcpc.eth0.log")
        return out if re.search(r"inet 10\.63\.0\.1(0\d|10)/24", out) else None

    out = wait_until(leased, 40, "cli's lease from srv", step=2)
    address = re.search(r"inet (10\.63\.0\.\d+)/24", out).group(1)
    # srv's own book says so (SIGUSR1 makes udhcpd write its lease file now)
    leases = ok(r, "srv", "kill -USR1 $(pidof udhcpd); sleep 1; dumpleases -f /run/udhcpd.leases")
    mac = st["cli"]["macs"][0]
    assert re.search(rf"{mac}\s+{re.escape(address)}\b", leases), leases


def test_nat_egress_reaches_the_internet_and_nothing_comes_back_in(lab):
    r, inet, home = lab
    st = r.status(APP)
    web_ip = st["web-1"]["ips"][0].split("/")[0]
    web_host_addr = _host_addresses(r)[st["web-1"]["host"]]
    out = ok(r, "web-1", f"nc -w 5 {INTERNET} 8000 </dev/null")
    assert out.strip() == f"you are {web_host_addr}"  # masqueraded to its host's uplink address
    rc, out = sh(r, "db", f"nc -w 3 {INTERNET} 8000 </dev/null")  # back has no nat
    assert rc != 0 and "you are" not in out
    # the internet tries to come in: to the guest through its host, and to the host itself
    inet.run("ip", "route", "add", "10.61.0.0/24", "via", web_host_addr)
    probe = inet.run(sys.executable, "-c", f"""
import socket
for addr, port in (("{web_ip}", 8080), ("{web_ip}", 8081), ("{web_host_addr}", 8081), ("{web_host_addr}", 53)):
    s = socket.socket(); s.settimeout(2)
    try:
        s.connect((addr, port)); print(addr, port, "OPEN")
    except OSError as e:
        print(addr, port, "closed", e)
""")
    assert "OPEN" not in probe.stdout and probe.stdout.count("closed") == 4, probe.stdout + probe.stderr
    assert inet.run("ping", "-c", "1", "-W", "2", web_ip).returncode != 0


INTERNET_GET = r"""
import socket, sys
for port in map(int, sys.argv[2:]):
    s = socket.socket(); s.settimeout(3)
    try:
        s.connect((sys.argv[1], port)); s.sendall(b"GET / HTTP/1.0\r\n\r\n")
        body = b""
        while True:
            chunk = s.recv(4096)
            if not chunk:
                break
            body += chunk
        print(port, "OPEN", body.decode(errors="replace").splitlines()[-1:])
    except OSError as e:
        print(port, "closed", e)
    finally:
        s.close()
"""


def _from_internet(inet: FakeInternet, addr: str, *ports: int) -> dict[int, str]:
    out = inet.run(sys.executable, "-c", INTERNET_GET, addr, *map(str, ports)).stdout
    return {int(line.split()[0]): line.split(None, 1)[1] for line in out.splitlines() if line.strip()}


def test_exposed_services_answer_on_the_hosts_address_and_go_with_the_blueprint(lab):
    """The cloud path, on the local underlay: the internet reaches a declared service at its host's
    uplink address (DNAT by the host runtime's nft table), the guest's own port when free and the
    fixed host_port for 9090; an undeclared port the guest listens on does not answer, nor does
    the guest's address itself. A re-publish without the services removes the forwards."""
    r, inet, home = lab
    ok(r, "web-1", "mkdir -p /www /www2 && echo hello from web-1 >/www/index.html && echo undeclared "
                   ">/www2/index.html; for p in 8080 9090; do httpd -p $p -h /www 2>/dev/null; done; "
                   "httpd -p 8081 -h /www2 2>/dev/null; true")
    st = r.status(APP)
    host_addr = _host_addresses(r)[st["web-1"]["host"]]
    web_ip = st["web-1"]["ips"][0].split("/")[0]
    seen = _from_internet(inet, host_addr, 8080, HOST_PORT, 8081)
    assert "OPEN" in seen[8080] and "hello from web-1" in seen[8080], seen
    assert "OPEN" in seen[HOST_PORT] and "hello from web-1" in seen[HOST_PORT], seen
    assert seen[8081].startswith("closed"), seen
    assert _from_internet(inet, web_ip, 8080)[8080].startswith("closed")  # only through the host
    # the services leave the blueprint: their forwards leave the host
    bare = home / "netsvc-noservices.yaml"
    bare.write_text(re.sub(r"\n    services: \[.*\]", "", (home / "netsvc.yaml").read_text()))
    assert "services:" not in bare.read_text()
    try:
        r("publish", str(bare), "--name", APP)
        seen = _from_internet(inet, host_addr, 8080, HOST_PORT)
        assert all(v.startswith("closed") for v in seen.values()), seen
    finally:
        r("publish", str(home / "netsvc.yaml"), "--name", APP)
    seen = _from_internet(inet, host_addr, 8080)
    assert "hello from web-1" in seen[8080], seen


def _host_addresses(r: Ravel) -> dict[str, str]:
    """Host name -> underlay address, from the state (ravel shows no command for it)."""
    import sqlite3

    db = sqlite3.connect(r.home / "state" / "state.db")
    try:
        return dict(db.execute("SELECT name, address FROM hosts WHERE app=?", (APP,)).fetchall())
    finally:
        db.close()


def test_two_apps_with_the_same_names_and_subnets_stay_apart(lab):
    r, _, home = lab
    bp2 = home / "netsvc2.yaml"
    bp2.write_text(BLUEPRINT2.replace("GUEST", str(GUEST)))
    p = r("publish", str(bp2), "--name", APP2, "--wait", "--timeout", "180")
    assert "all VMs ready" in p.stdout
    one, two = r.status(APP)["web-1"], r.status(APP2)["web-1"]
    assert one["ips"] == two["ips"]  # same names, same subnets, same leases
    ok(r, "web-1", "mkdir -p /www && echo hello from the second app >/www/index.html && httpd -p 8080 -h /www",
       app=APP2)
    port1 = int(re.search(r":(\d+)->8080/tcp", " ".join(one["services"])).group(1))
    port2 = int(re.search(r":(\d+)->8080/tcp", " ".join(two["services"])).group(1))
    assert port1 != port2
    assert "hello from the second app" in wait_until(lambda: _try(get, port2), 20, "the second app's relay")
    ok(r, "web-1", "mkdir -p /www && echo hello from web-1 >/www/index.html; pidof httpd >/dev/null || httpd -p 8080 -h /www")
    assert "hello from web-1" in get(port1)
    # the second app's web-1 knows only its own app: no db, and 10.62.0.21 is nobody there
    rc, out = sh(r, "web-1", "nslookup db; ping -c 1 -W 2 10.62.0.21", app=APP2)
    assert rc != 0 and "NXDOMAIN" in out and "0 packets received" in out
    r("destroy", APP2, "--yes")
    assert not relay_pids(APP2) and not dnsmasq_pids(APP2)
    assert not [ns for ns in namespaces() if ns.startswith(f"rv-{APP2}-")]
    assert "hello from web-1" in get(port1)  # the first app did not notice
