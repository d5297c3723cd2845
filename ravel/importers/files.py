"""The file side of `ravel import`: find the descriptor, read and check the disks, unpack an
OVA, verify its manifest. Parsing itself is pure (ovf.py, vmx.py, vmdk.py)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tarfile
from pathlib import Path
from typing import BinaryIO

from ..errors import EnvironmentProblem
from .ovf import parse_mf, parse_ovf
from .vm import ImportedDisk, ImportedVM, ImportResult, bad, safe_name
from .vmdk import embedded_descriptor, looks_like_descriptor, parse_descriptor
from .vmx import parse_vmx

HEAD = 1 << 20  # the embedded VMDK descriptor sits in the first sectors
MAX_DESCRIPTOR = 16 << 20  # .ovf, .vmx, .mf and VMDK descriptors: text, never this large
PROBE_TIMEOUT = 300  # seconds for `qemu-img check` of one disk (it reads the metadata, not the data)
DISK_SUFFIXES = {".vmdk": "vmdk", ".qcow2": "qcow2", ".img": "raw", ".raw": "raw", ".flat": "raw"}
BUS_OF_ADAPTER = {"ide": "ide", "lsilogic": "lsilogic", "buslogic": "lsilogic", "legacyesx": "lsilogic",
                  "pvscsi": "pvscsi", "lsisas1068": "lsisas"}


def import_path(path: Path, output: Path | None = None) -> ImportResult:
    path = Path(path)
    if output is not None:
        check_output(output)  # before anything is unpacked next to it
    if not path.exists():
        raise bad(str(path), "no such file")
    if path.is_dir():
        raise bad(str(path), "is a directory; give the .ova, .ovf, .vmx or disk file")
    kind = _kind(path)
    if kind == "ova":
        dest = (output.parent / f"{output.stem}-disks") if output else Path.cwd() / f"{path.stem}-disks"
        return import_ova(path, dest)
    if kind == "ovf":
        return import_ovf(path)
    if kind == "vmx":
        return import_vmx(path)
    return import_disk(path, kind)


def _kind(path: Path) -> str:
    ext = path.suffix.lower()
    known = {".ova": "ova", ".ovf": "ovf", ".vmx": "vmx", ".vmdk": "vmdk", ".qcow2": "qcow2", ".img": "raw",
             ".raw": "raw"}
    if ext in known:
        return known[ext]
    with open(path, "rb") as fh:
        head = fh.read(4096)
    if head[257:262] == b"ustar":
        return "ova"
    if head.lstrip().startswith((b"<?xml", b"<Envelope", b"<ovf:Envelope")):
        return "ovf"
    if head[:4] == b"KDMV" or looks_like_descriptor(head):
        return "vmdk"
    if head[:4] == b"QFI\xfb":
        return "qcow2"
    raise bad(str(path), "cannot tell what this is: expected .ova, .ovf, .vmx, .vmdk, .qcow2 or a raw .img")


# -- disks -------------------------------------------------------------------------------------

def check_disk(path: Path, fmt: str, where: str, key: str = "") -> None:
    """A disk file the blueprint will reference: it exists and is what it claims to be."""
    if not path.is_file():
        raise bad(where, f"disk {path} does not exist", key=key)
    with open(path, "rb") as fh:
        head = fh.read(HEAD)
    if fmt == "qcow2" and head[:4] != b"QFI\xfb":
        raise bad(where, f"disk {path} is not a qcow2 image", key=key)
    if fmt == "vmdk":
        text = embedded_descriptor(head, str(path))
        if text is None:
            if not looks_like_descriptor(head):
                raise bad(str(path), "not a VMDK: neither a sparse header (KDMV) nor a text descriptor")
            text = head.decode("utf-8", errors="replace")
            desc = parse_descriptor(text, str(path))
            for ext in desc.extents:
                if ext.file and not (path.parent / ext.file).is_file():
                    raise bad(str(path), f"extent file {ext.file} is missing (next to the descriptor)",
                              key="extents")
        elif text:
            parse_descriptor(text, str(path))
    probe_disk(path, fmt, where, key)


def probe_disk(path: Path, fmt: str, where: str, key: str = "") -> None:
    """QEMU can open the disk and its metadata is whole (`qemu-img check` where the format has
    one, else `qemu-img info`): a truncated or damaged disk is refused at import, not at boot."""
    def run(*argv: str) -> subprocess.CompletedProcess[str]:
        try:
            return subprocess.run(["qemu-img", *argv, "-f", fmt, "--output=json", str(path)],
                                  capture_output=True, text=True, timeout=PROBE_TIMEOUT, check=False)
        except FileNotFoundError:
            raise EnvironmentProblem("qemu-img is not installed; it checks imported disks",
                                     hint="apt-get install qemu-utils") from None
        except subprocess.TimeoutExpired:
            raise bad(where, f"disk {path}: `qemu-img {argv[0]}` took longer than {PROBE_TIMEOUT} s",
                      key=key) from None

    p = run("check") if fmt in ("qcow2", "vmdk", "vhdx") else run("info")
    if p.returncode == 63:  # "this image format does not support checks"
        p = run("info")
    # check: 0 clean, 2 corrupted, 3 leaked clusters only (harmless), 1 could not check
    if p.returncode not in (0, 3):
        why = (p.stderr.strip().splitlines() or [f"exit status {p.returncode}"])[-1]
        why = why.removeprefix("qemu-img: ").replace(f"Could not open '{path}': ", "")
        try:
            corrupt = json.loads(p.stdout).get("corruptions", 0) if p.stdout.strip() else 0
        except ValueError:
            corrupt = 0
        if corrupt:
            why = f"{corrupt} corruptions in its metadata"
        raise bad(where, f"disk {path.name} is damaged or truncated ({why}); QEMU could not use it", key=key)


def _vmdk_bus(path: Path) -> str:
    with open(path, "rb") as fh:
        head = fh.read(HEAD)
    text = embedded_descriptor(head, str(path))
    if text is None:
        text = head.decode("utf-8", errors="replace")
    if not text:
        return "virtio"
    desc = parse_descriptor(text, str(path))
    return BUS_OF_ADAPTER.get((desc.adapter_type or "").lower(), "virtio")


def import_disk(path: Path, fmt: str) -> ImportResult:
    path = path.absolute()
    check_disk(path, fmt, str(path))
    bus = _vmdk_bus(path) if fmt == "vmdk" else "virtio"
    vm = ImportedVM(safe_name(path.stem, "vm"), disks=[ImportedDisk(bus, str(path), fmt)])
    return ImportResult(str(path), [vm], [f"{vm.name}: a bare disk says nothing of CPUs, memory or NICs; "
                                          "defaults used (1 CPU, 512 MiB, no NIC)"])


# -- .vmx --------------------------------------------------------------------------------------

def import_vmx(path: Path) -> ImportResult:
    path = path.absolute()
    text = _read_text(path)
    vm, disks, notes = parse_vmx(text, str(path))
    for bus, name, key in disks:
        disk = _inside(path, name, key)
        fmt = DISK_SUFFIXES.get(disk.suffix.lower())
        if fmt is None:
            raise bad(str(path), f"{name!r} is not named like a disk image ({', '.join(sorted(DISK_SUFFIXES))})",
                      key=key)
        check_disk(disk, fmt, str(path), key)
        vm.disks.append(ImportedDisk(bus, str(disk), fmt))
    isos, vm.cdroms = vm.cdroms, []
    for name in isos:
        iso = _inside(path, name, "cdrom")
        if iso.is_file():
            vm.cdroms.append(str(iso))
        else:
            notes.append(f"{vm.name}: CD/DVD image {name} is not there; not imported")
    return ImportResult(str(path), [vm], notes)


def _inside(vmx: Path, name: str, key: str) -> Path:
    """A file a .vmx names: in the VM's folder or below it. A descriptor is untrusted input, and
    `../../etc/passwd` would otherwise become a "raw disk" of the blueprint."""
    folder = vmx.parent.resolve()
    target = (folder / name).resolve()
    if target != folder and folder not in target.parents:
        raise bad(str(vmx), f"{name!r} lies outside the VM's folder {folder}; copy the file into it",
                  key=key)
    return target


def _read_text(path: Path) -> str:
    if path.stat().st_size > MAX_DESCRIPTOR:
        raise bad(str(path), "larger than 16 MiB; not a descriptor")
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise bad(str(path), f"not UTF-8 text (bad byte at offset {exc.start})") from None


# -- .ovf + files ------------------------------------------------------------------------------

def _digest(algo: str) -> "hashlib._Hash":
    return hashlib.new(algo)


def _verify(name: str, algo_hex: tuple[str, str], digest: str, source: str) -> None:
    algo, want = algo_hex
    if digest != want:
        raise bad(source, f"{algo.upper()} digest does not match the manifest "
                          f"(manifest {want[:16]}..., file {digest[:16]}...)", key=name)


def _hash_file(path: Path, algo: str) -> str:
    h = _digest(algo)
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(4 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _result(source: Path, vms: list[ImportedVM], refs, notes: list[str], disk_dir: Path) -> ImportResult:
    by_name = {vm.name: vm for vm in vms}
    for ref in refs:
        disk = disk_dir / ref.href
        if ref.format == "iso":  # a CD/DVD image in the package
            if disk.is_file():
                by_name[ref.vm].cdroms.append(str(disk.absolute()))
            else:
                notes.append(f"{ref.vm}: CD/DVD image {ref.href} is not in the package; not imported")
            continue
        check_disk(disk, ref.format, str(source), f"References.File[{ref.href}]")
        by_name[ref.vm].disks.append(ImportedDisk(ref.bus, str(disk.absolute()), ref.format))
    return ImportResult(str(source), vms, notes)


def import_ovf(path: Path) -> ImportResult:
    path = path.absolute()
    text = _read_text(path)
    vms, refs, notes = parse_ovf(text.encode(), str(path))
    for ref in refs:
        if not (path.parent / ref.href).is_file():
            raise bad(str(path), f"disk file {ref.href} is missing (expected next to the descriptor)",
                      key=f"References.File[{ref.href}]")
    mf = path.with_suffix(".mf")
    if mf.is_file():
        entries = parse_mf(_read_text(mf), str(mf))
        for name, (algo, want) in entries.items():
            f = path.parent / name
            if not f.is_file():
                raise bad(str(mf), f"{name}: listed in the manifest but missing", key=name)
            _verify(name, (algo, want), _hash_file(f, algo), str(mf))
    return _result(path, vms, refs, notes, path.parent)


# -- .ova --------------------------------------------------------------------------------------

def import_ova(path: Path, dest: Path) -> ImportResult:
    path = path.absolute()
    try:
        with tarfile.open(path, "r:") as tar:
            members = tar.getmembers()
            return _import_tar(path, tar, members, dest)
    except tarfile.ReadError as exc:
        raise bad(str(path), f"not a readable OVA (tar) archive: {exc}; is it truncated?") from None
    except EOFError:
        raise bad(str(path), "the archive ends early: it is truncated") from None


def _import_tar(path: Path, tar: tarfile.TarFile, members: list[tarfile.TarInfo], dest: Path) -> ImportResult:
    files = {}
    for m in members:
        if not m.isfile():
            continue
        if "/" in m.name.strip("./") or m.name.startswith(("/", "..")):
            raise bad(str(path), f"archive member {m.name!r} is not a plain file name; refusing to unpack it")
        files[m.name.lstrip("./") if m.name.startswith("./") else m.name] = m
    ovfs = [n for n in files if n.lower().endswith(".ovf")]
    if not ovfs:
        raise bad(str(path), "no .ovf descriptor in the archive")
    ovf_name = ovfs[0]
    ovf_bytes = _read_member(tar, files[ovf_name], path)
    mfs = [n for n in files if n.lower().endswith(".mf")]
    manifest = parse_mf(_read_member(tar, files[mfs[0]], path).decode("utf-8", errors="replace"),
                        f"{path}:{mfs[0]}") if mfs else {}
    if ovf_name in manifest:
        _verify(ovf_name, manifest[ovf_name], hashlib.new(manifest[ovf_name][0], ovf_bytes).hexdigest(),
                f"{path}:{mfs[0]}")
    vms, refs, notes = parse_ovf(ovf_bytes, f"{path}:{ovf_name}")
    for ref in refs:
        if ref.href not in files:
            raise bad(f"{path}:{ovf_name}", f"disk file {ref.href} is not in the archive",
                      key=f"References.File[{ref.href}]")
    for name in manifest:
        if name not in files:
            raise bad(f"{path}:{mfs[0]}", f"{name}: listed in the manifest but not in the archive", key=name)
    made = not dest.exists()
    dest.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    try:
        for ref in refs:
            member = files[ref.href]
            algo = manifest.get(ref.href, ("sha256", ""))[0]
            h = hashlib.new(algo)
            out = dest / ref.href
            tmp = out.with_name(f".{out.name}.part")
            src = tar.extractfile(member)
            assert src is not None
            try:
                with open(tmp, "wb") as fh:
                    _copy(src, fh, h, member.size, path, ref.href)
                if ref.href in manifest:
                    _verify(ref.href, manifest[ref.href], h.hexdigest(), f"{path}:{mfs[0]}")
                os.replace(tmp, out)
                written.append(out)
            finally:
                if tmp.exists():
                    tmp.unlink()
        if not manifest:
            notes.append(f"{path.name} has no manifest (.mf): its files were not checked")
        return _result(path, vms, refs, notes, dest)
    except BaseException:
        # a failed import leaves nothing behind: the disks folder if it made it, else its files
        if made:
            shutil.rmtree(dest, ignore_errors=True)
        else:
            for f in written:
                f.unlink(missing_ok=True)
        raise


def _read_member(tar: tarfile.TarFile, member: tarfile.TarInfo, path: Path) -> bytes:
    if member.size > MAX_DESCRIPTOR:
        raise bad(str(path), f"{member.name} is larger than 16 MiB; not a descriptor")
    f = tar.extractfile(member)
    assert f is not None
    data = f.read()
    if len(data) != member.size:
        raise bad(str(path), f"{member.name}: the archive ends early (truncated)")
    return data


def _copy(src: BinaryIO, dst: BinaryIO, h, size: int, path: Path, name: str) -> None:
    left = size
    while left:
        chunk = src.read(min(left, 4 << 20))
        if not chunk:
            raise bad(str(path), f"{name}: the archive ends early (truncated)")
        h.update(chunk)
        dst.write(chunk)
        left -= len(chunk)


# -- the blueprint written ---------------------------------------------------------------------

def check_output(output: Path) -> None:
    """`-o FILE` can be written: not a directory, in a directory that is there."""
    if output.is_dir():
        raise bad(str(output), "is a directory; give the blueprint file to write, e.g. -o lab.yaml")
    parent = output.parent if str(output.parent) else Path(".")
    if not parent.is_dir():
        raise bad(str(output), f"cannot write here: directory {parent} does not exist")


def write_blueprint(result: ImportResult, output: Path) -> None:
    """Write the blueprint with its disk paths relative to the file (a blueprint resolves them
    against its own folder), so the folder can be moved as a whole."""
    check_output(output)
    try:
        output.write_text(result.yaml(base_dir=str(output.absolute().parent)))
    except OSError as exc:
        raise bad(str(output), f"cannot write: {exc.strerror}") from None
