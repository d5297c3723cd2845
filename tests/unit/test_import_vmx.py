"""`ravel import` of .vmx files and bare disks, and VMDK descriptors (disks made with qemu-img)."""

from __future__ import annotations

import pytest

from ravel.errors import BlueprintError
from ravel.importers import import_path
from ravel.importers.vmdk import embedded_descriptor, parse_descriptor
from ravel.importers.vmx import parse_vmx

from .importfixtures import make_vmdk

VMX = """\
.encoding = "UTF-8"
config.version = "8"
virtualHW.version = "19"
displayName = "ESXi Host A"
numvcpus = "4"
memsize = "8192"
firmware = "efi"
vhv.enable = "TRUE"
scsi0.present = "TRUE"
scsi0.virtualDev = "pvscsi"
scsi0:0.present = "TRUE"
scsi0:0.fileName = "esxi.vmdk"
sata0.present = "TRUE"
sata0:1.present = "TRUE"
sata0:1.deviceType = "cdrom-image"
sata0:1.fileName = "installer.iso"
ethernet0.present = "TRUE"
ethernet0.virtualDev = "e1000e"
ethernet0.networkName = "Mgmt Net"
ethernet1.present = "TRUE"
ethernet1.virtualDev = "vmxnet3"
ethernet1.networkName = "vMotion"
"""


def test_vmx_devices_are_kept():
    vm, disks, notes = parse_vmx(VMX, "a.vmx")
    assert (vm.name, vm.cpus, vm.memory_mib, vm.firmware, vm.nested) == ("esxi-host-a", 4, 8192, "uefi", True)
    assert [(n.model, n.network) for n in vm.nics] == [("e1000e", "Mgmt Net"), ("vmxnet3", "vMotion")]
    assert disks == [("pvscsi", "esxi.vmdk", "scsi0:0.fileName")]
    assert vm.cdroms == ["installer.iso"] and not any("CD/DVD" in n for n in notes)  # an ISO file is kept


def test_vmx_bad_values_are_located():
    with pytest.raises(BlueprintError, match=r"a.vmx: memsize: expected a whole number from 1 to 1073741824, got 'lots'"):
        parse_vmx(VMX.replace('memsize = "8192"', 'memsize = "lots"'), "a.vmx")
    with pytest.raises(BlueprintError, match=r"ethernet0.virtualDev: unsupported NIC model 'tulip'"):
        parse_vmx(VMX.replace('"e1000e"', '"tulip"'), "a.vmx")
    with pytest.raises(BlueprintError, match="not a VMware .vmx"):
        parse_vmx('foo = "bar"\n', "a.vmx")


def test_vmx_with_disk_and_with_missing_disk(tmp_path):
    (tmp_path / "a.vmx").write_text(VMX)
    with pytest.raises(BlueprintError, match=r"scsi0:0.fileName: disk .*esxi.vmdk does not exist"):
        import_path(tmp_path / "a.vmx")
    make_vmdk(tmp_path / "esxi.vmdk", subformat="monolithicSparse")
    r = import_path(tmp_path / "a.vmx")
    assert r.json()["vms"]["esxi-host-a"]["disks"] == [{"bus": "pvscsi", "image": str(tmp_path / "esxi.vmdk")}]
    assert r.json()["vms"]["esxi-host-a"]["nics"] == [{"model": "e1000e", "network": "mgmt-net"},
                                                      {"model": "vmxnet3", "network": "vmotion"}]


@pytest.mark.parametrize("subformat", ["monolithicSparse", "streamOptimized"])
def test_embedded_descriptor_of_qemu_img_vmdks(tmp_path, subformat):
    disk = make_vmdk(tmp_path / "d.vmdk", subformat=subformat)
    text = embedded_descriptor(disk.read_bytes()[:1 << 20], str(disk))
    assert text is not None
    desc = parse_descriptor(text, str(disk))
    assert desc.create_type == subformat
    assert desc.extents[0].kind == "SPARSE" and desc.extents[0].sectors == 8 << 11


def test_flat_descriptor_with_missing_extent(tmp_path):
    make_vmdk(tmp_path / "flat.vmdk", subformat="monolithicFlat")
    assert (tmp_path / "flat-flat.vmdk").is_file()
    r = import_path(tmp_path / "flat.vmdk")
    assert r.vms[0].disks[0].format == "vmdk"
    (tmp_path / "flat-flat.vmdk").unlink()
    with pytest.raises(BlueprintError, match="extent file flat-flat.vmdk is missing"):
        import_path(tmp_path / "flat.vmdk")


def test_unsupported_descriptor(tmp_path):
    d = tmp_path / "rdm.vmdk"
    d.write_text('# Disk DescriptorFile\nversion=1\ncreateType="vmfsRawDeviceMap"\n'
                 'RW 2048 VMFSRDM "rdm-rdm.vmdk"\nddb.adapterType = "lsilogic"\n')
    with pytest.raises(BlueprintError, match=r"createType: unsupported VMDK createType 'vmfsRawDeviceMap'"):
        import_path(d)
    d.write_text('# Disk DescriptorFile\nversion=1\ncreateType="quantumDisk"\nRW 1 SPARSE "x"\n')
    with pytest.raises(BlueprintError, match="unsupported VMDK createType 'quantumDisk'"):
        import_path(d)


def test_bare_disks(tmp_path):
    make_vmdk(tmp_path / "srv.vmdk", subformat="monolithicSparse")
    r = import_path(tmp_path / "srv.vmdk")
    assert r.json()["vms"]["srv"]["disks"][0]["bus"] in ("lsilogic", "ide", "virtio")
    import subprocess
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(tmp_path / "b.qcow2"), "8M"], check=True)
    assert import_path(tmp_path / "b.qcow2").json()["vms"]["b"]["disks"] == [
        {"bus": "virtio", "image": str(tmp_path / "b.qcow2")}]
    (tmp_path / "c.qcow2").write_bytes(b"not qcow")
    with pytest.raises(BlueprintError, match="is not a qcow2 image"):
        import_path(tmp_path / "c.qcow2")
    with pytest.raises(BlueprintError, match="no such file"):
        import_path(tmp_path / "none.ova")


def test_vmx_import_keeps_its_iso_as_a_cd_drive(tmp_path):
    from ravel.importers import import_path
    from ravel.model.resolve import load_blueprint
    from tests.unit.importfixtures import make_vmdk

    make_vmdk(tmp_path / "esxi.vmdk")
    (tmp_path / "installer.iso").write_bytes(b"\0" * 0x8001 + b"CD001" + b"\0" * 2042)
    (tmp_path / "esxi.vmx").write_text(VMX)
    r = import_path(tmp_path / "esxi.vmx")
    assert r.vms[0].cdroms == [str(tmp_path / "installer.iso")]
    bp = load_blueprint(r.yaml(), "imported.yaml")
    assert bp.vms[0].cdroms == (str(tmp_path / "installer.iso"),)
    (tmp_path / "installer.iso").unlink()
    r = import_path(tmp_path / "esxi.vmx")
    assert r.vms[0].cdroms == [] and any("installer.iso is not there" in n for n in r.notes)
