"""`ravel import` given what an adversary or a slip gives it (issue 15, item 7): each is exit 2
with one clear line, nothing left behind, and what is written points at its disks relatively."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ravel.errors import BlueprintError
from ravel.importers import import_path, write_blueprint
from ravel.importers.ovf import parse_ovf
from ravel.importers.vmx import parse_vmx
from ravel.model.resolve import load_blueprint

from .importfixtures import item, make_ova, make_vmdk, manifest, ovf
from .test_import_vmx import VMX

ROOT = Path(__file__).resolve().parents[2]


def ravel(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, RAVEL_HOME=str(cwd / "home"), PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "ravel", *args], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=120)


def one_clean_line(p: subprocess.CompletedProcess[str]) -> str:
    assert p.returncode == 2, (p.returncode, p.stderr)
    assert "Traceback" not in p.stderr and "internal error" not in p.stderr, p.stderr
    lines = [line for line in p.stderr.strip().splitlines() if not line.startswith("note:")]
    assert len(lines) == 1, p.stderr
    return lines[0]


def ova_with(tmp_path: Path, disk: bytes) -> Path:
    files = {"web.ovf": ovf().encode(), "disk1.vmdk": disk}
    return make_ova(tmp_path / "web.ova", {**files, "web.mf": manifest(files)})


# -- -o ----------------------------------------------------------------------------------------

def test_output_into_a_missing_directory_or_onto_a_directory(tmp_path):
    disk = make_vmdk(tmp_path / "d.vmdk")
    line = one_clean_line(ravel("import", str(disk), "-o", str(tmp_path / "nope" / "lab.yaml"), cwd=tmp_path))
    assert "nope" in line and "does not exist" in line
    line = one_clean_line(ravel("import", str(disk), "-o", str(tmp_path), cwd=tmp_path))
    assert "is a directory" in line


def test_output_check_comes_before_unpacking(tmp_path):
    ova = ova_with(tmp_path, make_vmdk(tmp_path / "x.vmdk").read_bytes())
    with pytest.raises(BlueprintError, match="does not exist"):
        import_path(ova, tmp_path / "nope" / "lab.yaml")
    assert not (tmp_path / "nope").exists() and not list(tmp_path.glob("*-disks"))


def test_written_paths_are_relative_to_the_output_file(tmp_path):
    ova = ova_with(tmp_path, make_vmdk(tmp_path / "x.vmdk", marker=b"DATA").read_bytes())
    out = tmp_path / "labs" / "web.yaml"
    out.parent.mkdir()
    result = import_path(ova, out)
    write_blueprint(result, out)
    text = out.read_text()
    assert "image: web-disks/disk1.vmdk" in text and str(tmp_path) not in text.split("\n", 3)[-1]
    bp = load_blueprint(text, str(out), str(out.parent))  # as `ravel validate` reads it
    assert bp.vms[0].disks[0].image == str(out.parent / "web-disks" / "disk1.vmdk")
    # the folder moves as a whole
    moved = tmp_path / "moved"
    out.parent.rename(moved)
    bp = load_blueprint((moved / "web.yaml").read_text(), "web.yaml", str(moved))
    assert Path(bp.vms[0].disks[0].image).is_file()


# -- OVF without the essentials -----------------------------------------------------------------

def test_ovf_without_id_name_cpu_or_memory_says_what_it_assumed():
    text = ovf(memory="").replace('<VirtualSystem ovf:id="web01">', "<VirtualSystem>")
    text = text.replace("<Name>Web Server 01</Name>", "")
    text = text.replace(item(3, 1, "2 virtual CPU(s)", AllocationUnits="hertz * 10^6", VirtualQuantity="2"), "")
    text = text.replace("<rasd:ResourceType>4</rasd:ResourceType>", "<rasd:ResourceType>1</rasd:ResourceType>")
    vms, _, notes = parse_ovf(text, "x.ovf")
    assert (vms[0].name, vms[0].cpus, vms[0].memory_mib) == ("vm1", 1, 512)
    assert any("neither an ovf:id nor a Name; imported as vm1" in n for n in notes), notes
    assert any("no CPU item" in n and "1 vCPU" in n for n in notes), notes
    assert any("no memory item" in n and "512 MiB" in n for n in notes), notes


@pytest.mark.parametrize("field", ["cpus", "memory"])
def test_ovf_huge_quantities_are_range_checked(field):
    huge = "9" * 5000
    text = ovf(cpus=huge) if field == "cpus" else ovf(
        memory=f"<rasd:AllocationUnits>byte * 2^20</rasd:AllocationUnits><rasd:VirtualQuantity>{huge}</rasd:VirtualQuantity>")
    start = time.perf_counter()
    with pytest.raises(BlueprintError, match="out of range") as info:
        parse_ovf(text, "x.ovf")
    assert time.perf_counter() - start < 1
    assert len(info.value.lines()[0]) < 200  # the number is not echoed whole


def test_ovf_entity_expansion_is_refused():
    entities = "".join(f'<!ENTITY e{i} "{f"&e{i - 1};" * 10}">' for i in range(1, 10))
    text = f'<?xml version="1.0"?><!DOCTYPE Envelope [<!ENTITY e0 "xxxxxxxxxx">{entities}]><Envelope>&e9;</Envelope>'
    start = time.perf_counter()
    with pytest.raises(BlueprintError, match="not valid XML"):
        parse_ovf(text, "x.ovf")
    assert time.perf_counter() - start < 1


def test_vmx_huge_numbers_are_range_checked():
    with pytest.raises(BlueprintError, match=r"memsize: expected a whole number from 1 to \d+, got '9999"):
        parse_vmx(VMX.replace('memsize = "8192"', f'memsize = "{"9" * 5000}"'), "a.vmx")


# -- damaged disks -------------------------------------------------------------------------------

def truncated_vmdk(tmp_path: Path) -> bytes:
    whole = make_vmdk(tmp_path / "whole.vmdk", size_mib=4, marker=os.urandom(1 << 20)).read_bytes()
    return whole[:100_000]


def footerless_vmdk(tmp_path: Path) -> bytes:
    """A stream-optimized VMDK whose grain directory is 'at the end' (as VMware writes them) with
    the footer gone, as when the download stopped early: QEMU says 'Invalid footer'."""
    data = bytearray(make_vmdk(tmp_path / "s.vmdk", size_mib=4, marker=b"DATA").read_bytes())
    data[56:64] = b"\xff" * 8  # gdOffset = GD_AT_END
    return bytes(data[:-1024])


@pytest.mark.parametrize("damage", [truncated_vmdk, footerless_vmdk])
def test_ova_with_a_damaged_vmdk_fails_and_leaves_nothing(tmp_path, damage):
    ova = ova_with(tmp_path, damage(tmp_path))  # the manifest matches: the damage is the disk's own
    before = sorted(p.name for p in tmp_path.iterdir())
    line = one_clean_line(ravel("import", str(ova), "-o", str(tmp_path / "lab.yaml"), cwd=tmp_path))
    assert "disk1.vmdk" in line and "damaged or truncated" in line, line
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != "home") == before  # no lab-disks/, no lab.yaml


def test_ova_failure_in_an_existing_disks_folder_removes_only_its_own_files(tmp_path):
    ova = ova_with(tmp_path, truncated_vmdk(tmp_path))
    (tmp_path / "lab-disks").mkdir()
    (tmp_path / "lab-disks" / "mine.txt").write_text("keep")
    with pytest.raises(BlueprintError, match="damaged or truncated"):
        import_path(ova, tmp_path / "lab.yaml")
    assert sorted(p.name for p in (tmp_path / "lab-disks").iterdir()) == ["mine.txt"]


def test_bare_truncated_disk_is_refused(tmp_path):
    disk = tmp_path / "t.vmdk"
    disk.write_bytes(truncated_vmdk(tmp_path))
    with pytest.raises(BlueprintError, match="damaged or truncated"):
        import_path(disk)


# -- paths a .vmx names --------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["../../etc/passwd", "/etc/passwd", "sub/../../x.vmdk"])
def test_vmx_disk_outside_its_folder_is_refused(tmp_path, name):
    vm = tmp_path / "vm"
    vm.mkdir()
    (vm / "a.vmx").write_text(VMX.replace('"esxi.vmdk"', f'"{name}"'))
    with pytest.raises(BlueprintError, match="outside the VM's folder") as info:
        import_path(vm / "a.vmx")
    assert "scsi0:0.fileName" in info.value.lines()[0]


def test_vmx_disk_that_is_not_a_disk_name_is_refused(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    (tmp_path / "a.vmx").write_text(VMX.replace('"esxi.vmdk"', '"notes.txt"'))
    with pytest.raises(BlueprintError, match="not named like a disk image"):
        import_path(tmp_path / "a.vmx")


def test_vmx_disk_in_a_subfolder_is_fine(tmp_path):
    (tmp_path / "disks").mkdir()
    make_vmdk(tmp_path / "disks" / "esxi.vmdk", subformat="monolithicSparse")
    (tmp_path / "a.vmx").write_text(VMX.replace('"esxi.vmdk"', '"disks/esxi.vmdk"'))
    r = import_path(tmp_path / "a.vmx")
    assert r.vms[0].disks[0].image == str((tmp_path / "disks" / "esxi.vmdk").resolve())


# -- budgets of the descriptors' numbers -------------------------------------------------------

@pytest.mark.parametrize("units", ["byte * 10^999999999", "byte * 2^99999", "byte * 9999^999"])
def test_allocation_units_are_bounded_before_they_are_computed(units):
    text = ovf(memory=f"<rasd:AllocationUnits>{units}</rasd:AllocationUnits><rasd:VirtualQuantity>1</rasd:VirtualQuantity>")
    start = time.perf_counter()
    with pytest.raises(BlueprintError, match="unknown AllocationUnits"):
        parse_ovf(text, "x.ovf")
    assert time.perf_counter() - start < 1


def test_a_huge_resource_type_is_named_short():
    text = ovf().replace("<rasd:ResourceType>10</rasd:ResourceType>", f"<rasd:ResourceType>{'1' * 5000}</rasd:ResourceType>")
    with pytest.raises(BlueprintError, match="is not a number") as info:
        parse_ovf(text, "x.ovf")
    assert len(info.value.lines()[0]) < 200


def test_vmdk_descriptor_with_a_huge_extent_size_is_an_error():
    from ravel.importers.vmdk import parse_descriptor
    text = f'# Disk DescriptorFile\ncreateType="monolithicFlat"\nRW {"9" * 5000} FLAT "d-flat.vmdk" 0\n'
    with pytest.raises(BlueprintError, match="not a VMDK descriptor line"):
        parse_descriptor(text, "d.vmdk")


def test_manifest_with_long_garbage_is_an_error_quickly():
    from ravel.importers.ovf import parse_mf
    start = time.perf_counter()
    with pytest.raises(BlueprintError, match="not a manifest line"):
        parse_mf("SHA256(" + ")" * 200_000 + "\n", "x.mf")
    assert time.perf_counter() - start < 1
