"""End-to-end: the demo guest image (guest/) boots under QEMU/TCG and does its job.

Two guests run concurrently inside a network namespace made for this test
(``rvtest-guest-<pid>``: one bridge, two taps; no traffic leaves it):

* ``t1``: vmxnet3 NIC, a pvscsi disk and a virtio-blk disk, ``-cpu max``;
* ``t2``: virtio-net-pci NIC, ``-cpu max``.

Checked: the ready line within 30 s; the two NIC models ping each other (unicast
and the all-hosts multicast group); a nested KVM VM runs inside the TCG guest
(``kvmtest``, the ``nested: true`` capability); data written with dd to both disks
survives a power-off and a fresh QEMU on the same qcow2 files.

Needs root, qemu-system-x86_64, qemu-img, ip, and what guest/build.sh needs.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

try:  # imported as a package module (tests/e2e/__init__.py present) ...
    from .guestlib import Console, ConsoleError
except ImportError:  # ... or with tests/e2e on sys.path (pytest's default rootdir mode)
    from guestlib import Console, ConsoleError  # type: ignore[no-redef]

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
IMAGE_DIR = REPO / ".cache" / "guest"
BUILD = REPO / "guest" / "build.sh"
READY_TIMEOUT = 30.0
QEMU = "qemu-system-x86_64"
SUBNET = "10.9.0"

BOOT_TIMES: dict[str, list[float]] = {}


def _sh(*args: str, timeout: float = 15.0, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(list(args), capture_output=True, text=True, timeout=timeout,
                          check=check)


def _netns_list() -> list[str]:
    out = _sh("ip", "netns", "list", check=False).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is dead for our purposes.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


# --------------------------------------------------------------------------------------
# image


@pytest.fixture(scope="module")
def image() -> Path:
    if os.geteuid() != 0:
        pytest.fail("test_guest_image needs root (network namespaces, taps, QEMU); "
                    "run it as root, e.g. `sudo .venv/bin/pytest -m e2e`", pytrace=False)
    missing = [t for t in (QEMU, "qemu-img", "ip") if shutil.which(t) is None]
    if missing:
        pytest.fail(f"missing tools: {', '.join(missing)} "
                    "(apt-get install qemu-system-x86 qemu-utils iproute2)", pytrace=False)
    try:
        proc = subprocess.run([str(BUILD), str(IMAGE_DIR)], capture_output=True, text=True,
                              timeout=900)
    except subprocess.TimeoutExpired:
        pytest.fail("guest/build.sh took more than 15 minutes", pytrace=False)
    if proc.returncode != 0:
        pytest.fail(f"guest/build.sh failed (rc={proc.returncode}):\n{proc.stdout}\n{proc.stderr}",
                    pytrace=False)
    for f in ("vmlinuz", "initrd.img", "VERSION"):
        assert (IMAGE_DIR / f).is_file() and (IMAGE_DIR / f).stat().st_size > 0, f
    return IMAGE_DIR


# --------------------------------------------------------------------------------------
# guests


class Guest:
    """One QEMU process inside the test namespace, with its serial console."""

    def __init__(self, name: str, *, ns: str, workdir: Path, image: Path, ip: str,
                 nic: str, mac: str, tap: str, disks: list[tuple[str, Path]] = ()):
        self.name, self.ns, self.workdir, self.image = name, ns, workdir, image
        self.ip, self.nic, self.mac, self.tap, self.disks = ip, nic, mac, tap, list(disks)
        self.sock = workdir / f"{name}.sock"
        self.boots = 0
        self.proc: subprocess.Popen | None = None
        self.pids: set[int] = set()  # every QEMU PID this guest ever had
        self.console: Console | None = None
        self.started = 0.0
        self.ready_line = ""

    @property
    def log(self) -> Path:
        return self.workdir / f"{self.name}.boot{self.boots}.log"

    @property
    def pidfile(self) -> Path:
        return self.workdir / f"{self.name}.pid"

    def argv(self) -> list[str]:
        a = [
            "ip", "netns", "exec", self.ns,
            QEMU, "-name", self.name,
            "-accel", "tcg,thread=multi,tb-size=64", "-cpu", "max", "-m", "256", "-smp", "1",
            "-display", "none", "-nodefaults", "-no-user-config",
            "-pidfile", str(self.pidfile),
            "-chardev", f"socket,id=s0,path={self.sock},server=on,wait=off,logfile={self.log}",
            "-serial", "chardev:s0",
            "-kernel", str(self.image / "vmlinuz"), "-initrd", str(self.image / "initrd.img"),
            "-append", f"console=ttyS0 quiet ravel.name={self.name} ravel.ip=eth0:{self.ip}/24",
            "-netdev", f"tap,id=n0,ifname={self.tap},script=no,downscript=no",
            "-device", f"{self.nic},netdev=n0,mac={self.mac}",
        ]
        for i, (model, path) in enumerate(self.disks):
            a += ["-drive", f"file={path},if=none,id=d{i},format=qcow2,cache=writeback"]
            if model == "pvscsi":
                a += ["-device", f"pvscsi,id=pv{i}", "-device", f"scsi-hd,drive=d{i},bus=pv{i}.0"]
            else:
                a += ["-device", f"{model},drive=d{i}"]
        return a

    def start(self) -> None:
        assert self.proc is None or self.proc.poll() is not None, "already running"
        self.boots += 1
        for p in (self.sock, self.pidfile):
            p.unlink(missing_ok=True)
        self.started = time.monotonic()
        self.proc = subprocess.Popen(self.argv(), stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL,
                                     stderr=open(self.workdir / f"{self.name}.stderr", "ab"),
                                     start_new_session=True)
        self.pids.add(self.proc.pid)

    def wait_ready(self, timeout: float = READY_TIMEOUT) -> float:
        """Connect to the console and wait for the ready line; returns seconds since start."""
        assert self.proc is not None
        deadline = self.started + timeout
        while not self.sock.exists():
            if self.proc.poll() is not None:
                raise AssertionError(f"{self.name}: QEMU exited with {self.proc.returncode}: "
                                     f"{self._stderr()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.name}: no console socket after {timeout}s")
            time.sleep(0.02)
        self._note_pidfile()
        self.console = Console(self.sock, log=self.log,
                               connect_timeout=max(1.0, deadline - time.monotonic()))
        try:
            m = self.console.wait_for(r"RAVEL-READY (\S+) (\S+)\n",
                                      timeout=max(0.1, deadline - time.monotonic()))
        except ConsoleError as e:
            raise AssertionError(f"{self.name}: no ready line within {timeout}s: {e}\n"
                                 f"stderr: {self._stderr()}") from None
        took = time.monotonic() - self.started
        self.ready_line = m.group(0).strip()
        BOOT_TIMES.setdefault(self.name, []).append(took)
        return took

    def run(self, cmd: str, timeout: float = 30.0) -> tuple[int, str]:
        assert self.console is not None, f"{self.name} is not up"
        return self.console.run(cmd, timeout)

    def check(self, cmd: str, timeout: float = 30.0) -> str:
        rc, out = self.run(cmd, timeout)
        assert rc == 0, f"{self.name}: `{cmd}` failed with {rc}:\n{out}"
        return out

    def poweroff(self, timeout: float = 20.0) -> None:
        """Power off from inside the guest; QEMU exits. Kill it if it does not."""
        assert self.console is not None and self.proc is not None
        self.console.send("sync; poweroff\n")
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.stop()
            raise AssertionError(f"{self.name}: QEMU still running {timeout}s after poweroff")
        finally:
            self.console.close()
            self.console = None

    def stop(self) -> None:
        """Kill this guest's QEMU (only PIDs we started) and wait for it, bounded."""
        if self.console is not None:
            self.console.close()
            self.console = None
        self._note_pidfile()
        for pid in sorted(self.pids):
            if _alive(pid) and self._is_ours(pid):
                try:
                    os.kill(pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(_alive(p) for p in self.pids):
            if self.proc is not None:
                self.proc.poll()  # reap
            time.sleep(0.05)
        for pid in sorted(self.pids):
            if _alive(pid) and self._is_ours(pid):
                os.kill(pid, signal.SIGKILL)
        if self.proc is not None:
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                pass

    def _note_pidfile(self) -> None:
        try:
            self.pids.add(int(self.pidfile.read_text().strip()))
        except (OSError, ValueError):
            pass

    def _is_ours(self, pid: int) -> bool:
        """The PID still runs a command line naming our unique console socket."""
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                return str(self.sock).encode() in f.read()
        except OSError:
            return False

    def _stderr(self) -> str:
        try:
            return (self.workdir / f"{self.name}.stderr").read_text()[-2000:]
        except OSError:
            return ""


class Lab:
    def __init__(self, ns: str, workdir: Path):
        self.ns, self.workdir = ns, workdir
        self.guests: dict[str, Guest] = {}


@pytest.fixture(scope="module")
def lab(image: Path, tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest):
    ns = f"rvtest-guest-{os.getpid()}"
    workdir = tmp_path_factory.mktemp("guest")
    assert len(str(workdir / "t1.sock")) < 100, "console socket path too long for AF_UNIX"
    lab = Lab(ns, workdir)

    def cleanup() -> None:
        for g in lab.guests.values():
            g.stop()
        if ns in _netns_list():
            _sh("ip", "netns", "del", ns, check=False)
        deadline = time.monotonic() + 10
        while ns in _netns_list() and time.monotonic() < deadline:
            time.sleep(0.1)
        # Nothing may be left behind.
        left = [f"{g.name}:{p}" for g in lab.guests.values() for p in g.pids if _alive(p)]
        assert not left, f"QEMU processes left running: {left}"
        assert ns not in _netns_list(), f"network namespace {ns} left behind"

    request.addfinalizer(cleanup)

    _sh("ip", "netns", "add", ns)
    nsx = ("ip", "netns", "exec", ns)
    _sh(*nsx, "ip", "link", "set", "lo", "up")
    _sh(*nsx, "ip", "link", "add", "br0", "type", "bridge", "stp_state", "0",
        "forward_delay", "0", "mcast_snooping", "0")
    _sh(*nsx, "ip", "link", "set", "br0", "mtu", "1500", "up")
    for tap in ("tap1", "tap2"):
        _sh(*nsx, "ip", "tuntap", "add", "dev", tap, "mode", "tap")
        _sh(*nsx, "ip", "link", "set", tap, "master", "br0", "mtu", "1500", "up")

    disks = []
    for model, fname in (("pvscsi", "t1-pvscsi.qcow2"), ("virtio-blk-pci", "t1-virtio.qcow2")):
        path = workdir / fname
        _sh("qemu-img", "create", "-q", "-f", "qcow2", str(path), "64M")
        disks.append((model, path))

    common = dict(ns=ns, workdir=workdir, image=image)
    lab.guests["t1"] = Guest("t1", ip=f"{SUBNET}.1", nic="vmxnet3", mac="52:54:00:9a:00:01",
                             tap="tap1", disks=disks, **common)
    lab.guests["t2"] = Guest("t2", ip=f"{SUBNET}.2", nic="virtio-net-pci",
                             mac="52:54:00:9a:00:02", tap="tap2", **common)
    for g in lab.guests.values():  # boot concurrently
        g.start()
    with ThreadPoolExecutor(len(lab.guests)) as pool:  # and time each one's ready line
        list(pool.map(lambda g: g.wait_ready(), lab.guests.values()))
    yield lab


# --------------------------------------------------------------------------------------
# tests (they share the two guests and run in file order; the reboot test is last)


def test_ready_line(lab: Lab) -> None:
    t1, t2 = lab.guests["t1"], lab.guests["t2"]
    assert t1.ready_line == f"RAVEL-READY t1 eth0:{SUBNET}.1/24"
    assert t2.ready_line == f"RAVEL-READY t2 eth0:{SUBNET}.2/24"
    for g in (t1, t2):
        took = BOOT_TIMES[g.name][0]
        print(f"{g.name}: ready {took:.2f}s after QEMU start (TCG, booted concurrently)")
        assert took < READY_TIMEOUT
        # Exactly one ready line (QEMU's log has all the serial output of this boot).
        assert g.log.read_text(errors="replace").count("RAVEL-READY") == 1
        # The hostname and address it announces are real.
        assert g.check("hostname") == g.name
        assert f"inet {g.ip}/24" in g.check("ip -o -4 addr show dev eth0")
        assert "mtu 1500" in g.check("ip -o link show dev eth0")


def test_nic_models_ping_each_other(lab: Lab) -> None:
    t1, t2 = lab.guests["t1"], lab.guests["t2"]
    assert t1.check("basename $(readlink /sys/class/net/eth0/device/driver)") == "vmxnet3"
    assert t2.check("basename $(readlink /sys/class/net/eth0/device/driver)") == "virtio_net"
    out = t1.check(f"ping -c 3 -W 5 {t2.ip}", timeout=20)
    assert "3 packets received" in out, out
    out = t2.check(f"ping -c 3 -W 5 {t1.ip}", timeout=20)
    assert "3 packets received" in out, out
    # Multicast: the all-hosts group is answered by the other guest
    # (icmp_echo_ignore_broadcasts=0 in the image).
    # (t1 answers itself too; -c 3 leaves time for t2's answers to the first pings.)
    rc, out = t1.run("ping -c 3 -W 3 -I eth0 224.0.0.1", timeout=20)
    assert f"from {t2.ip}" in out, out


def test_nested_kvm_in_tcg_guest(lab: Lab) -> None:
    t1 = lab.guests["t1"]
    assert t1.check("grep -qw svm /proc/cpuinfo && echo svm") == "svm"
    assert t1.check("test -c /dev/kvm && echo yes") == "yes"
    rc, out = t1.run("kvmtest", timeout=30)
    assert rc == 0 and "KVMTEST OK" in out, out


def test_disks_survive_reboot(lab: Lab) -> None:
    t1 = lab.guests["t1"]
    # SCSI scanning is asynchronous: wait (bounded) for both disks.
    wait = ("i=0; while [ $i -lt 100 ] && ! { [ -b /dev/sda ] && [ -b /dev/vda ]; }; "
            "do sleep 0.1; i=$((i+1)); done; ls /dev/sda /dev/vda")
    t1.check(wait, timeout=20)
    # sda sits on the pvscsi HBA, vda on virtio-blk.
    assert t1.check("cat /sys/block/sda/device/../../scsi_host/host*/proc_name") == "vmw_pvscsi"
    assert t1.check("basename $(readlink /sys/block/vda/device/driver)") == "virtio_blk"
    tokens = {dev: f"ravel-{dev}-{uuid.uuid4().hex}" for dev in ("sda", "vda")}
    for dev, tok in tokens.items():
        t1.check(f"printf '%s' {tok} >/tmp/tok && "
                 f"dd if=/tmp/tok of=/dev/{dev} bs=512 conv=sync,fsync 2>/dev/null")
    t1.check("sync")

    t1.poweroff()
    t1.start()
    took = t1.wait_ready()
    print(f"t1: ready {took:.2f}s after QEMU restart")
    t1.check(wait, timeout=20)
    for dev, tok in tokens.items():
        got = t1.check(f"dd if=/dev/{dev} bs=512 count=1 2>/dev/null | head -c {len(tok)}")
        assert got == tok, f"{dev}: read back {got!r}, wrote {tok!r}"
    # The network still works after the reboot (same tap, same bridge).
    out = t1.check(f"ping -c 1 -W 5 {lab.guests['t2'].ip}", timeout=15)
    assert "1 packets received" in out, out

