"""Shipping boot files and base images to hosts that do not share this filesystem."""

from __future__ import annotations

import os

from ravel.host.desired import VM, Desired, Disk
from ravel.run.ship import digest, referenced_files, remote_path, rewrite, ship
from ravel.transport.base import CommandResult


def vm(name, argv, disks=()):
    return VM(name, True, tuple(argv), f"/r/{name}.pid", f"/r/{name}.qmp", tuple(disks))


DOC = Desired("t", "/r", vms=(
    vm("a", ["qemu", "-kernel", "/img/vmlinuz", "-initrd", "/img/initrd.img", "-append", "-kernel"],
       [Disk("/d/a0.qcow2", base="/img/base.qcow2"), Disk("/d/a1.qcow2", size_mib=1)]),
    vm("b", ["qemu", "-kernel", "/img/vmlinuz"]),
))


def test_referenced_files_and_rewrite_are_exact():
    assert referenced_files(DOC) == ["/img/base.qcow2", "/img/initrd.img", "/img/vmlinuz"]
    out = rewrite(DOC, {"/img/vmlinuz": "/h/k", "/img/initrd.img": "/h/i", "/img/base.qcow2": "/h/b"})
    assert out.vms[0].argv == ("qemu", "-kernel", "/h/k", "-initrd", "/h/i", "-append", "-kernel")
    assert out.vms[0].disks[0].base == "/h/b" and out.vms[0].disks[1] == Disk("/d/a1.qcow2", size_mib=1)
    assert DOC.vms[0].argv[2] == "/img/vmlinuz"  # the input is not modified


class FakeHost:
    """A transport whose host filesystem is a directory: records what was sent."""

    host = "h1"
    is_local = False

    def __init__(self, root):
        self.root, self.sent = root, []

    def run(self, argv, input=None, timeout=120, check=True):
        d = self.root / argv[-1].lstrip("/")
        names = "\n".join(sorted(os.listdir(d))) if d.is_dir() else ""
        return CommandResult(0 if d.is_dir() else 2, names, "")

    def put(self, local, remote, mode=0o644):
        dest = self.root / remote.lstrip("/")
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(local.read_bytes())
        self.sent.append(remote)


def test_ship_sends_each_file_once_by_content(tmp_path):
    src = tmp_path / "img"
    src.mkdir()
    for name in ("vmlinuz", "initrd.img", "base.qcow2"):
        (src / name).write_bytes(name.encode() * 100)
    doc = rewrite(DOC, {f"/img/{n}": str(src / n) for n in ("vmlinuz", "initrd.img", "base.qcow2")})
    host = FakeHost(tmp_path / "host")
    out = ship(host, doc, "/var/lib/ravel/images")
    assert len(host.sent) == 3
    k = remote_path("/var/lib/ravel/images", str(src / "vmlinuz"), digest(str(src / "vmlinuz")))
    assert out.vms[1].argv == ("qemu", "-kernel", k)
    assert (tmp_path / "host" / k.lstrip("/")).read_bytes() == (src / "vmlinuz").read_bytes()
    again = ship(host, doc, "/var/lib/ravel/images")
    assert again == out and len(host.sent) == 3  # nothing sent twice
    (src / "vmlinuz").write_bytes(b"a new kernel")
    ship(host, doc, "/var/lib/ravel/images")
    assert len(host.sent) == 4  # changed content, new name


def test_cd_images_are_sent_and_renamed_in_their_drive():
    drive = "file=/img/seed.iso,if=none,id=cd0,media=cdrom,readonly=on,format=raw"
    doc = Desired("t", "/r", vms=(vm("a", ["qemu", "-drive", drive,
                                           "-drive", "file=/d/a0.qcow2,if=none,id=disk0,format=qcow2"]),))
    assert referenced_files(doc) == ["/img/seed.iso"]  # a disk overlay is the host's own: not sent
    out = rewrite(doc, {"/img/seed.iso": "/h/ab-seed.iso"})
    assert out.vms[0].argv[2] == "file=/h/ab-seed.iso,if=none,id=cd0,media=cdrom,readonly=on,format=raw"
    assert out.vms[0].argv[4] == "file=/d/a0.qcow2,if=none,id=disk0,format=qcow2"
