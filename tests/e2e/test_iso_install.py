"""The ISO install path (issue 12): a VM boots an installer CD onto its blank disk, then, published
again with `boot: {order: [disk]}`, boots from the disk the installer wrote, keeping that disk.

The installer ISO is built by tests/e2e/isoinstall/build.sh (grub-mkrescue; cached under
.cache/isoinstall by content). Its init copies the whole CD onto /dev/vda with dd (the ISO is a
hybrid image, so the copy boots through the same GRUB from the disk), writes a marker into the
disk's last MiB and prints RAVEL-INSTALLED; booted again with the marker on the disk it prints
RAVEL-BOOTED-FROM-DISK and GRUB's $root, which tells a disk boot (hd0) from a CD boot.

One lab for the module, destroyed at the end with a check that nothing is left behind.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest
from conftest import ROOT, Ravel, force_cleanup, leftovers, namespaces, qemu_pids

pytestmark = pytest.mark.e2e

APP = f"isoinst{os.getpid()}"
VM = "inst"
DISK_MIB = 256

BLUEPRINT = """\
name: isoinstall
vms:
  inst:
    memory: 256MiB
    disks: [{{size: {disk}MiB}}]
    cdroms: [{iso}]
    boot: {{order: [{order}]}}
    ready: {{console: {ready}}}
placement:
  host_types: [local-small]
"""


def blueprint(tmp: Path, iso: Path, order: str, ready: str) -> Path:
    path = tmp / f"{order.replace(', ', '-')}.yaml"
    path.write_text(BLUEPRINT.format(disk=DISK_MIB, iso=iso, order=order, ready=ready))
    return path


def qemu_argv(pid: int) -> list[str]:
    return [a.decode() for a in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0") if a]


def drive_file(argv: list[str], drive_id: str) -> Path:
    """The file= of the -drive with id=drive_id."""
    for a in argv:
        opts = dict(kv.split("=", 1) for kv in a.split(",") if "=" in kv)
        if opts.get("id") == drive_id and "file" in opts:
            return Path(opts["file"])
    raise AssertionError(f"no -drive id={drive_id} in {argv}")


def device_with(argv: list[str], drive_id: str) -> str:
    """The -device argument that attaches drive_id."""
    return next(a for a in argv if f"drive={drive_id}," in a + ",")


def publish(r: Ravel, bp: Path, timeout: int = 300) -> subprocess.CompletedProcess[str]:
    return r("publish", str(bp), "--name", APP, "--wait", "--timeout", str(timeout),
             timeout=timeout + 60)


@pytest.fixture(scope="module")
def iso() -> Path:
    out = subprocess.run(["bash", str(ROOT / "tests" / "e2e" / "isoinstall" / "build.sh"),
                          str(ROOT / ".cache" / "isoinstall")],
                         capture_output=True, text=True, timeout=900, check=False)
    assert out.returncode == 0, out.stderr
    path = Path(out.stdout.strip().splitlines()[-1])
    assert path.is_file() and path.stat().st_size < 64 << 20, path
    return path


@pytest.fixture(scope="module")
def lab(iso, tmp_path_factory):
    """The app installed from the CD: (Ravel, blueprint dir, state seen right after the install)."""
    home = tmp_path_factory.mktemp("home")
    bps = tmp_path_factory.mktemp("bp")
    r = Ravel(home)
    try:
        p = publish(r, blueprint(bps, iso, "cdrom, disk", "RAVEL-INSTALLED"))
        assert "all VMs ready" in p.stdout, p.stdout
        pid = qemu_pids(APP)[VM]
        argv = qemu_argv(pid)
        overlay = drive_file(argv, "disk0")
        installed = {"pid": pid, "argv": argv, "overlay": overlay, "inode": overlay.stat().st_ino,
                     "log": r("logs", APP, VM).stdout}
        yield r, bps, installed
    finally:
        r("destroy", APP, "--yes", check=False)
        left = leftovers(APP, home)
        force_cleanup(APP, home)
        assert not left, f"left behind: {left}"


def test_installs_from_the_cd_onto_the_blank_disk(lab, iso):
    r, _, installed = lab
    argv = installed["argv"]
    # the firmware boots the CD first, the disk second; the CD is read-only, the machine q35
    assert "-kernel" not in argv and argv[argv.index("-machine") + 1] == "q35"
    assert drive_file(argv, "cd0") == iso
    assert "readonly=on" in next(a for a in argv if "id=cd0" in a)
    cd, disk = device_with(argv, "cd0"), device_with(argv, "disk0")
    assert cd.startswith("ide-cd,") and "bootindex=1" in cd
    assert disk.startswith("virtio-blk-pci,") and "bootindex=2" in disk
    log = installed["log"]
    m = re.search(r"RAVEL-INSTALLED iso_bytes=(\d+) marker_mib=(\d+) booted_by=\((\S*)\)", log)
    assert m, log[-2000:]
    assert int(m.group(1)) == iso.stat().st_size  # the whole CD was copied
    assert int(m.group(2)) == DISK_MIB - 1
    assert not m.group(3).startswith("hd0"), m.group(0)  # GRUB came from the CD drive, not the disk
    assert "RAVEL-BOOTED-FROM-DISK" not in log and "RAVEL-INSTALL-FAILED" not in log
    st = r.status(APP)[VM]
    assert st["state"] == "running"


def test_republished_with_disk_order_boots_the_installed_disk(lab, iso):
    r, bps, installed = lab
    p = publish(r, blueprint(bps, iso, "disk", "RAVEL-BOOTED-FROM-DISK"))
    assert "all VMs ready" in p.stdout, p.stdout
    pid = qemu_pids(APP)[VM]
    assert pid != installed["pid"]  # restarted: its argv changed
    argv = qemu_argv(pid)
    # only the boot order changed: the disk is first and only, the CD is still there, not bootable
    assert "bootindex=1" in device_with(argv, "disk0")
    assert drive_file(argv, "cd0") == iso and "bootindex" not in device_with(argv, "cd0")
    changed = [(a, b) for a, b in zip(installed["argv"], argv) if a != b]
    assert len(argv) == len(installed["argv"]) and {a for a, _ in changed} == {
        device_with(installed["argv"], "disk0"), device_with(installed["argv"], "cd0")}, changed
    # the disk was kept: same overlay file (same inode), and the guest found the marker it wrote
    overlay = drive_file(argv, "disk0")
    assert overlay == installed["overlay"] and overlay.stat().st_ino == installed["inode"]
    log = r("logs", APP, VM).stdout
    assert log.startswith(installed["log"][:200])  # the same console log, appended to
    m = re.search(r"RAVEL-BOOTED-FROM-DISK root=\((\S*)\) cmdpath=\((\S*)\) "
                  r"marker=\[([^\]]*)\]", log)
    assert m, log[-2000:]
    # GRUB read the kernel from the disk
    assert re.fullmatch(r"hd0(,msdos\d+)?", m.group(1)), m.group(0)
    assert m.group(2) == "hd0", m.group(0)  # ... and the firmware started GRUB from the disk
    assert m.group(3) == f"RAVEL-ISO-INSTALL-MARKER/1 iso_bytes={iso.stat().st_size}"
    assert log.count("RAVEL-INSTALLED") == 1  # it did not install a second time
    # a second publish of the same blueprint changes nothing
    again = r("publish", str(blueprint(bps, iso, "disk", "RAVEL-BOOTED-FROM-DISK")), "--name", APP)
    assert "nothing to do" in again.stdout, again.stdout
    assert qemu_pids(APP)[VM] == pid


def test_destroy_leaves_nothing(lab):
    r, _, installed = lab
    assert any(ns.startswith(f"rv-{APP}-") for ns in namespaces())
    r("destroy", APP, "--yes")
    assert not leftovers(APP, r.home)
    assert not installed["overlay"].exists()
