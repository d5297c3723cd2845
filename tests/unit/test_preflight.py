"""Files a blueprint boots from, checked before anything is made: located errors for a missing,
unreadable or wrong image, ISO or user-data; formats read from the files themselves."""

from __future__ import annotations

import os
import subprocess
import textwrap

import pytest

from ravel.errors import BlueprintError
from ravel.model.resolve import load_blueprint
from ravel.run.preflight import check_files


def bp(tmp_path, vm_body: str):
    text = textwrap.dedent("""\
        name: pf
        vms:
          a:
        """) + textwrap.indent(textwrap.dedent(vm_body), "    ")
    (tmp_path / "pf.yaml").write_text(text)
    return load_blueprint(text, str(tmp_path / "pf.yaml"), str(tmp_path))


def problems(tmp_path, vm_body: str) -> list[str]:
    with pytest.raises(BlueprintError) as exc:
        check_files(bp(tmp_path, vm_body))
    return [str(p) for p in exc.value.problems]


def qemu_img(*args: str) -> None:
    subprocess.run(["qemu-img", *args], check=True, capture_output=True)


def test_formats_come_from_the_files(tmp_path):
    qemu_img("create", "-q", "-f", "qcow2", str(tmp_path / "cloud.img"), "16M")  # .img, but qcow2
    qemu_img("create", "-q", "-f", "vmdk", "-o", "subformat=streamOptimized", str(tmp_path / "so.vmdk"), "16M")
    qemu_img("create", "-q", "-f", "vpc", str(tmp_path / "d.vhd"), "16M")
    qemu_img("create", "-q", "-f", "vhdx", str(tmp_path / "d.vhdx"), "16M")
    (tmp_path / "disk.bin").write_bytes(b"\0" * 1024 * 1024)
    got = check_files(bp(tmp_path, """\
        disks: [{image: cloud.img}, {image: so.vmdk}, {image: d.vhd}, {image: d.vhdx}, {image: disk.bin}]
        """))
    assert [d.format for d in got.vms[0].disks] == ["qcow2", "vmdk", "vhd", "vhdx", "raw"]


def test_missing_unreadable_and_not_disk_images_are_located(tmp_path):
    (tmp_path / "notes.txt").write_text("not a disk\n")
    qemu_img("create", "-q", "-f", "qcow2", str(tmp_path / "q.qcow2"), "16M")
    (tmp_path / "secret.qcow2").write_bytes((tmp_path / "q.qcow2").read_bytes())
    os.chmod(tmp_path / "secret.qcow2", 0)
    found = problems(tmp_path, """\
        disks:
          - {image: gone.qcow2}
          - {image: notes.txt}
          - {image: q.qcow2, format: vmdk}
        """)
    assert found[0].endswith(f"pf.yaml:5:17: vms.a.disks[0].image: disk 0 of VM a: image {tmp_path}/gone.qcow2 does not exist")
    assert ":6:17: vms.a.disks[1].image: disk 1 of VM a: " in found[1] and "is not a disk image (11 bytes" in found[1]
    assert ":7:17: vms.a.disks[2].image: " in found[2] and "is a qcow2 image, not vmdk" in found[2]
    if os.geteuid() != 0:  # root reads anything; the mode check is for everyone else
        assert "is not readable" in problems(tmp_path, "disks: [{image: secret.qcow2}]\n")[0]


def test_cdroms_uefi_vars_and_user_data_files(tmp_path):
    (tmp_path / "fake.iso").write_bytes(b"\0" * 40000)
    found = problems(tmp_path, """\
        firmware: uefi
        cdroms: [missing.iso, fake.iso]
        uefi_vars: vars.fd
        cloud_init: {user_data: ud.yaml}
        """)
    assert any("vms.a.cdroms[0]: CD-ROM image of VM a" in p and "missing.iso does not exist" in p for p in found)
    assert any("vms.a.cdroms[1]: CD-ROM image of VM a" in p and "is not an ISO 9660 image" in p for p in found)
    assert any("vms.a.uefi_vars: UEFI variables of VM a" in p for p in found)
    assert any("vms.a.cloud_init.user_data: user-data of VM a" in p and "ud.yaml does not exist" in p for p in found)


def test_bad_user_data_is_a_located_error(tmp_path):
    (tmp_path / "ud.yaml").write_text("#cloud-config\nruncmd: 3\n")
    found = problems(tmp_path, "cloud_init: {user_data: ud.yaml}\n")
    assert len(found) == 1 and "vms.a.cloud_init.user_data: user-data of VM a: " in found[0]
    assert "runcmd" in found[0]
    found = problems(tmp_path, 'cloud_init:\n  user_data: "not a header\\nsecond line\\n"\n')
    assert "must start with a cloud-init header" in found[0]
