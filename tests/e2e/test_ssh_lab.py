"""The demo lab over SSH: `ravel publish --transport ssh` on the local provider, so every host
runs its own sshd and ravel reaches it with paramiko, pinned host key and all.

The lab must pass the same network checks as the local lab: those tests are reused from
test_local_lab.py as they are (they address the lab by that module's APP name, so this lab
takes the same name; pytest runs the two modules' labs one after the other in a process).
Then what only SSH has: a host key mismatch, and a host that never answers.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest
import test_local_lab as local_lab
from conftest import ROOT, Ravel, force_cleanup, leftovers, namespaces, qemu_pids, wait_until
from guestlib import Console

from ravel import keys
from ravel.errors import TransportError
from ravel.transport.ssh import SSHTransport

APP = local_lab.APP
SILENT = f"na{os.getpid()}"  # an app with a host whose sshd never answers


def sshd_pids(app: str) -> list[int]:
    """Every sshd of `app`'s hosts (their command lines name the app's run dir)."""
    found = []
    for d in Path("/proc").iterdir():
        try:
            cmd = (d / "cmdline").read_bytes()
        except OSError:
            continue
        if d.name.isdigit() and b"sshd" in cmd and f"/{app}/sshd-".encode() in cmd:
            found.append(int(d.name))
    return found


def root_links() -> list[str]:
    out = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True).stdout
    return [line.split(": ")[1].split("@")[0] for line in out.splitlines() if ": rvul" in line]


def root_link_of(home: Path) -> str:
    from ravel.paths import paths

    return f"rvul{paths({'RAVEL_HOME': str(home)}).tag}"


def ssh_leftovers(app: str, home: Path) -> list[str]:
    found = leftovers(app, home) + [f"sshd pid {p}" for p in sshd_pids(app)]
    if (home / "state" / "keys" / "hostkeys" / app).exists():
        found.append(f"host keys of {app}")
    return found


class SshRavel(Ravel):
    """The CLI, remembering where each VM's console is: asking `ravel status` (which observes
    every host over SSH) before each console command would only make the checks slow."""

    consoles: dict[tuple[str, str], tuple[str, str]]

    def console(self, app: str, vm: str) -> Console:
        if (app, vm) not in self.consoles:
            self.consoles.update({(app, n): (v["console"], v["log"]) for n, v in self.status(app).items()})
        sock, log = self.consoles[(app, vm)]
        return Console(sock, log=log)


@pytest.fixture(scope="module")
def ravel(tmp_path_factory):
    home = tmp_path_factory.mktemp("home")
    r = SshRavel(home)
    r.consoles = {}
    try:
        p = r("publish", "blueprints/demo.yaml", "--name", APP, "--transport", "ssh", "--wait", "--timeout", "240")
        assert "all VMs ready" in p.stdout
        # an SSH host does not read this machine's files: the boot files were sent, by content
        assert "sending vmlinuz" in p.stderr and "sending initrd.img" in p.stderr, p.stderr
        r.first_publish = p
        yield r
    finally:
        for app in (APP, SILENT):
            r("destroy", app, "--yes", check=False)
        left = ssh_leftovers(APP, home) + ssh_leftovers(SILENT, home)
        left += [f"link {name}" for name in root_links() if name == root_link_of(home)]
        for app in (APP, SILENT):
            for pid in sshd_pids(app):
                os.kill(pid, signal.SIGKILL)
            force_cleanup(app, home)
        assert not left, f"left behind: {left}"


# -- the local lab's checks, on hosts reached over SSH -----------------------------------------
test_every_vm_runs_on_three_hosts = local_lab.test_every_vm_runs_on_three_hosts
test_cross_host_ping_on_both_networks = local_lab.test_cross_host_ping_on_both_networks
test_vmxnet3_and_virtio_nics = local_lab.test_vmxnet3_and_virtio_nics
test_full_size_frames_cross_the_overlay = local_lab.test_full_size_frames_cross_the_overlay
test_arp_broadcast_reaches_every_guest = local_lab.test_arp_broadcast_reaches_every_guest
test_multicast_crosses_hosts = local_lab.test_multicast_crosses_hosts
test_vlan_tags_pass_between_hosts = local_lab.test_vlan_tags_pass_between_hosts
test_nested_guest_runs_a_kvm_guest = local_lab.test_nested_guest_runs_a_kvm_guest
test_noop_republish_changes_nothing = local_lab.test_noop_republish_changes_nothing  # stays on SSH
test_stop_start_keeps_disk_contents = local_lab.test_stop_start_keeps_disk_contents


# -- what only SSH has -------------------------------------------------------------------------

def hosts_in_state(r: Ravel, app: str) -> dict[str, dict]:
    db = sqlite3.connect(r.home / "state" / "state.db")
    try:
        rows = db.execute("SELECT name, extra FROM hosts WHERE app=?", (app,)).fetchall()
    finally:
        db.close()
    return {name: json.loads(extra) for name, extra in rows}


def sshd_files(r: Ravel, app: str, host: str) -> Path:
    (found,) = Path("/run/ravel").glob(f"*/{app}/sshd-{host}")
    return found


def test_every_host_is_reached_over_ssh_with_its_pinned_key(ravel):
    hosts = hosts_in_state(ravel, APP)
    assert len(hosts) == 3
    for name, extra in hosts.items():
        ssh = extra["host"]["ssh"]  # recorded, so stop/start/status/destroy use it too
        assert ssh["host_key"] == (ravel.home / "state/keys/hostkeys" / APP / f"{name}_ed25519.pub").read_text().strip()
        files = sshd_files(ravel, APP, name)
        assert (files / "host_ed25519").stat().st_mode & 0o777 == 0o600
        log = (files / "sshd.log").read_text()
        assert "Accepted publickey for root from 198.19.255.254" in log
        assert "Failed" not in log and "password" not in log.lower()
    assert (ravel.home / "state/keys/id_ed25519").stat().st_mode & 0o777 == 0o600
    # this machine's one link into the underlay: one address, the underlay's route, nothing more
    link = root_link_of(ravel.home)
    addrs = subprocess.run(["ip", "-o", "addr", "show", "dev", link], capture_output=True, text=True).stdout
    assert [line.split()[3] for line in addrs.splitlines()] == ["198.19.255.254/15"]
    routes = subprocess.run(["ip", "route", "show", "dev", link], capture_output=True, text=True).stdout
    assert routes.split()[0] == "198.18.0.0/15" and len(routes.strip().splitlines()) == 1
    assert subprocess.run(["ip", "-6", "-o", "addr", "show", "dev", link], capture_output=True, text=True).stdout == ""


def _swap_host_key(files: Path, private: str) -> None:
    key = files / "host_ed25519"
    key.write_text(private)
    key.chmod(0o600)
    os.kill(int((files / "sshd.pid").read_text()), signal.SIGHUP)  # our sshd re-reads its key


def _serves(ssh: dict, host: str, public: str) -> bool:
    t = SSHTransport(host, ssh["address"], host_key=public, key_file=ssh["key_file"], device=ssh["device"])
    try:
        return t.run(["true"], timeout=3).ok
    except TransportError:
        return False
    finally:
        t.close()


def test_host_key_mismatch_is_refused_and_nothing_changes_on_that_host(ravel):
    host = ravel.status(APP)["db"]["host"]
    ssh = hosts_in_state(ravel, APP)[host]["host"]["ssh"]
    files = sshd_files(ravel, APP, host)
    original = (files / "host_ed25519").read_text()
    impostor = keys.generate()
    before = qemu_pids(APP)
    _swap_host_key(files, impostor.private_openssh)
    try:
        wait_until(lambda: _serves(ssh, host, impostor.public_line), 10, "sshd to serve the new key")
        logins = (files / "sshd.log").read_text().count("Accepted publickey")
        p = ravel("stop", APP, "db", check=False)
        assert p.returncode == 5, p.stderr
        (first,) = [line for line in p.stderr.splitlines() if line.startswith("error:")]
        assert first.startswith(f"error: {host}: HOST KEY MISMATCH at root@{ssh['address']}:22"), p.stderr
        assert "not retried" in first and "hint:" in p.stderr
        # ravel never logged in there, and every VM (db included) runs exactly as before
        assert (files / "sshd.log").read_text().count("Accepted publickey") == logins
        assert qemu_pids(APP) == before
        st = ravel.status(APP)
        assert st["db"]["state"] == "unreachable"  # status asks the host itself, over SSH
        assert {v["state"] for n, v in st.items() if n != "db" and v["host"] != host} == {"running"}
    finally:
        _swap_host_key(files, original)
        wait_until(lambda: _serves(ssh, host, ssh["host_key"]), 10, "sshd to serve its own key again")
    assert ravel.status(APP)["db"]["state"] == "running"


SILENT_BLUEPRINT = """\
name: silent
networks:
  back: {subnet: 10.20.0.0/24}
defaults:
  memory: 128MiB
  boot: {kernel: GUEST/vmlinuz, initrd: GUEST/initrd.img, cmdline: console=ttyS0 quiet}
vms:
  one:
    nics: [{network: back, ip: 10.20.0.1}]
  two:
    nics: [{network: back, ip: 10.20.0.2}]
placement:
  host_types: [local-small]
  anti_affinity: [[one, two]]
"""


def test_a_host_that_never_answers_ends_the_publish_and_destroy_removes_it(ravel, tmp_path):
    bp = tmp_path / "silent.yaml"
    bp.write_text(SILENT_BLUEPRINT.replace("GUEST", str(ROOT / ".cache" / "guest")))
    # host-2 exists before ravel makes it (ravel adopts its namespace) with TCP 22 dropped
    ns = f"rv-{SILENT}-host-2"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    subprocess.run(["ip", "netns", "exec", ns, "nft", (
        "add table inet rvblock; "
        "add chain inet rvblock input { type filter hook input priority 0; policy accept; }; "
        "add rule inet rvblock input tcp dport 22 drop")], check=True)
    started = time.monotonic()
    p = ravel("publish", str(bp), "--name", SILENT, "--transport", "ssh", "--timeout", "6", check=False)
    took = time.monotonic() - started
    assert p.returncode == 5, p.stderr
    assert took < 6 + 5, took  # --timeout bounds the whole publish
    error = [line for line in p.stderr.splitlines() if line.startswith("error:")]
    assert len(error) == 1 and error[0].startswith("error: host-2: no SSH connection to root@198.18."), p.stderr
    assert "timed out" in error[0] and "ravel destroy" in p.stderr
    # what was made is in the state, nothing was started, and destroy removes all of it
    listed = {a["name"]: a for a in json.loads(ravel("list", "--json").stdout)}
    assert listed[SILENT]["hosts"] == 2
    assert {f"rv-{SILENT}-host-1", ns} <= namespaces() and len(sshd_pids(SILENT)) == 2
    assert not qemu_pids(SILENT)
    ravel("destroy", SILENT, "--yes")
    assert not ssh_leftovers(SILENT, ravel.home)
    assert SILENT not in {a["name"] for a in json.loads(ravel("list", "--json").stdout)}


def test_logs_and_list(ravel):
    local_lab.test_logs_and_list(ravel)
    assert json.loads(ravel("list", "--json").stdout)[0]["provider"] == "local"


def test_boot_files_are_sent_once_and_guests_boot_from_the_host_copy(ravel):
    from ravel.state import State

    st = State(ravel.home / "state")
    try:
        for rec in st.hosts(APP):
            for vm in rec.extra["desired"]["vms"]:
                kernel = vm["argv"][vm["argv"].index("-kernel") + 1]
                assert "/images/" in kernel and kernel.endswith("-vmlinuz"), kernel
                assert os.path.getsize(kernel) == os.path.getsize(local_lab.ROOT / ".cache/guest/vmlinuz")
    finally:
        st.close()
    again = ravel("publish", "blueprints/demo.yaml", "--name", APP)
    assert "sending" not in again.stderr and "nothing to do" in again.stdout


# the console through the host's SSH transport (the runtime relays the serial socket)
test_interactive_console_and_detach_key = local_lab.test_interactive_console_and_detach_key
