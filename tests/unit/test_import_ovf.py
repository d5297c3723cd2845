"""`ravel import` of OVF descriptors and OVA archives: devices kept, bad input named precisely."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ravel.errors import BlueprintError
from ravel.importers import import_path
from ravel.importers.ovf import allocation_bytes, parse_mf, parse_ovf
from ravel.model.resolve import load_blueprint

from .importfixtures import make_ova, make_vmdk, manifest, ovf

ROOT = Path(__file__).resolve().parents[2]


def test_ovf_devices_are_kept():
    vms, refs, notes = parse_ovf(ovf(), "x.ovf")
    assert len(vms) == 1
    vm = vms[0]
    assert (vm.name, vm.cpus, vm.memory_mib, vm.firmware, vm.nested) == ("web-server-01", 2, 256, "uefi", True)
    assert [(n.model, n.network) for n in vm.nics] == [("vmxnet3", "VM Network")]
    assert [(r.bus, r.href, r.format) for r in refs] == [("pvscsi", "disk1.vmdk", "vmdk")]
    assert any("CD/DVD" in n for n in notes)


@pytest.mark.parametrize("nic,model,noted", [("E1000", "e1000", False), ("E1000e", "e1000e", False),
                                             ("PCNet32", "pcnet", False), ("VmxNet2", "vmxnet3", True)])
def test_ovf_nic_models(nic, model, noted):
    vms, _, notes = parse_ovf(ovf(nic=nic), "x.ovf")
    assert vms[0].nics[0].model == model
    assert any("nearest" in n for n in notes) == noted


@pytest.mark.parametrize("scsi,bus,note", [("lsilogic", "lsilogic", "no LSI Logic parallel"),
                                           ("lsilogicsas", "lsisas", None), ("buslogic", "lsilogic", "BusLogic")])
def test_ovf_scsi_controllers_and_nearest_equivalents(scsi, bus, note):
    vms, refs, notes = parse_ovf(ovf(scsi=scsi), "x.ovf")
    assert refs[0].bus == bus
    if note:
        assert any(note in n for n in notes)


def test_memory_units():
    assert allocation_bytes("byte * 2^20") == 2**20
    assert allocation_bytes("byte * 2^30") == 2**30
    assert allocation_bytes("MegaBytes") == 2**20
    vms, _, _ = parse_ovf(ovf(memory="<rasd:AllocationUnits>byte * 2^30</rasd:AllocationUnits>"
                                     "<rasd:VirtualQuantity>2</rasd:VirtualQuantity>"), "x.ovf")
    assert vms[0].memory_mib == 2048


@pytest.mark.parametrize("text,match", [
    ("<not xml", "not valid XML"),
    ("<Foo/>", "root element is <Foo>"),
])
def test_bad_descriptors(text, match):
    with pytest.raises(BlueprintError) as e:
        parse_ovf(text, "bad.ovf")
    assert match in e.value.lines()[0] and e.value.lines()[0].startswith("bad.ovf")


def test_unknown_nic_names_the_item():
    with pytest.raises(BlueprintError) as e:
        parse_ovf(ovf(nic="Tulip"), "x.ovf")
    line = e.value.lines()[0]
    assert "VirtualSystem[web01].Item[6].ResourceSubType" in line and "'Tulip'" in line


def test_disk_with_unknown_host_resource():
    bad = ovf().replace("ovf:/disk/vmdisk1", "ovf:/disk/nope")
    with pytest.raises(BlueprintError, match=r"Item\[5\].HostResource: .*names no disk"):
        parse_ovf(bad, "x.ovf")


def test_manifest_parse():
    assert parse_mf("SHA1(a.ovf)= ABCDEF\nSHA256(b.vmdk) = 0123\n", "m") == {
        "a.ovf": ("sha1", "abcdef"), "b.vmdk": ("sha256", "0123")}
    with pytest.raises(BlueprintError):
        parse_mf("MD5(a)= 00\n", "m")


# -- whole packages, through the files -------------------------------------------------------

def _ova(tmp_path: Path, algo: str = "SHA256", corrupt: str | None = None, drop: str | None = None) -> Path:
    vmdk = make_vmdk(tmp_path / "disk1.vmdk", marker=b"RAVEL-OVA-DISK")
    files = {"web.ovf": ovf().encode(), "disk1.vmdk": vmdk.read_bytes()}
    mf = manifest(files, algo)
    if corrupt:
        files[corrupt] = files[corrupt][:-1] + bytes([files[corrupt][-1] ^ 0xFF])
    members = {"web.ovf": files["web.ovf"], "web.mf": mf, "disk1.vmdk": files["disk1.vmdk"]}
    if drop:
        del members[drop]
    vmdk.unlink()
    return make_ova(tmp_path / "web.ova", members)


@pytest.mark.parametrize("algo", ["SHA1", "SHA256"])
def test_ova_import_verifies_and_extracts(tmp_path, algo):
    ova = _ova(tmp_path, algo)
    out = tmp_path / "out" / "lab.yaml"
    out.parent.mkdir()
    r = import_path(ova, out)
    disk = Path(r.vms[0].disks[0].image)
    assert disk == tmp_path / "out" / "lab-disks" / "disk1.vmdk" and disk.is_file()
    assert r.json() == {"vms": {"web-server-01": {
        "cpus": 2, "memory_mib": 256, "firmware": "uefi", "nested": True,
        "nics": [{"model": "vmxnet3", "network": "vm-network"}],
        "disks": [{"bus": "pvscsi", "image": str(disk)}]}}}
    bp = load_blueprint(r.yaml())  # what `-o` writes is a valid blueprint
    assert bp.vms[0].disks[0].format == "vmdk" and bp.vms[0].nics[0].model == "vmxnet3"


@pytest.mark.parametrize("algo", ["SHA1", "SHA256"])
def test_ova_bad_manifest_names_the_file(tmp_path, algo):
    ova = _ova(tmp_path, algo, corrupt="disk1.vmdk")
    with pytest.raises(BlueprintError) as e:
        import_path(ova, tmp_path / "lab.yaml")
    line = e.value.lines()[0]
    assert "disk1.vmdk" in line and f"{algo} digest does not match" in line
    assert line.count("disk1.vmdk") == 1, line
    assert not (tmp_path / "lab-disks").exists()  # not even the folder it would have filled


def test_ova_missing_disk(tmp_path):
    ova = _ova(tmp_path, drop="disk1.vmdk")
    with pytest.raises(BlueprintError, match="disk1.vmdk is not in the archive|listed in the manifest"):
        import_path(ova, tmp_path / "lab.yaml")


def test_truncated_ova(tmp_path):
    ova = _ova(tmp_path)
    data = ova.read_bytes()
    ova.write_bytes(data[: len(data) // 2])
    with pytest.raises(BlueprintError, match="truncated"):
        import_path(ova, tmp_path / "lab.yaml")


def test_ovf_with_missing_disk_file(tmp_path):
    (tmp_path / "web.ovf").write_text(ovf())
    with pytest.raises(BlueprintError, match="disk file disk1.vmdk is missing"):
        import_path(tmp_path / "web.ovf")


def test_ovf_with_disk_next_to_it(tmp_path):
    (tmp_path / "web.ovf").write_text(ovf())
    make_vmdk(tmp_path / "disk1.vmdk")
    r = import_path(tmp_path / "web.ovf")
    assert r.vms[0].disks[0].image == str(tmp_path / "disk1.vmdk")


def test_cli_import_json_and_errors(tmp_path):
    ova = _ova(tmp_path)
    env = dict(os.environ, RAVEL_HOME=str(tmp_path / "home"))
    p = subprocess.run([sys.executable, "-m", "ravel", "import", str(ova), "--json", "-o", str(tmp_path / "lab.yaml")],
                       capture_output=True, text=True, cwd=ROOT, env=env, timeout=60)
    assert p.returncode == 0, p.stderr
    data = json.loads(p.stdout)
    assert data["vms"]["web-server-01"]["nics"] == [{"model": "vmxnet3", "network": "vm-network"}]
    assert (tmp_path / "lab.yaml").is_file()
    bad = tmp_path / "bad.ova"
    bad.write_bytes(b"x" * 300)
    p = subprocess.run([sys.executable, "-m", "ravel", "import", str(bad)], capture_output=True, text=True,
                       cwd=ROOT, env=env, timeout=60)
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert str(bad) in p.stderr and len(p.stderr.strip().splitlines()) == 1, p.stderr
