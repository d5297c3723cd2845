"""Checks that need the filesystem, run before anything is created, reported with positions:
every file a VM boots from exists and is readable, and every base image is a disk image of the
format it claims (read from its first bytes, as QEMU probes it), so a typo or a wrong file is a
located error, never a VM that does not boot."""

from __future__ import annotations

import os
from dataclasses import replace

from ..errors import BlueprintError, Problem, RavelError
from ..model.blueprint import Blueprint, Disk
from .chains import sniff_format
from .seeds import check_user_data, read_user_data

HEAD = 4096
ISO_MAGIC_AT = 0x8001  # "CD001": an ISO 9660 volume descriptor


def check_files(bp: Blueprint) -> Blueprint:
    """The blueprint with each base image's format settled from the file itself; raises
    BlueprintError listing every missing, unreadable or wrong file."""
    problems: list[Problem] = []
    reported: set[str] = set()

    def bad(key: str, message: str) -> None:
        if key not in reported:
            reported.add(key)
            problems.append(Problem(bp.source, *bp.where(key), key, message))

    def need(path: str, key: str, what: str) -> bool:
        if key in reported:
            return False
        if not os.path.isfile(path):
            why = "does not exist" if not os.path.exists(path) else "is not a file"
            hint = " (run `make guest` to build the demo guest image)" if "/.cache/guest/" in path else ""
            bad(key, f"{what} {path} {why}{hint}")
            return False
        if not os.access(path, os.R_OK):
            bad(key, f"{what} {path} is not readable")
            return False
        return True

    vms = []
    for vm in bp.vms:
        base = f"vms.{vm.group}"
        disks = []
        # a key set through `defaults:` is located at the defaults block
        for i, disk in enumerate(vm.disks):
            key = _key(bp, f"{base}.disks[{i}].image", f"defaults.disks[{i}].image")
            if disk.image and need(disk.image, key, f"disk {i} of VM {vm.name}: image"):
                fmt, why = image_format(disk.image, disk.format)
                if why:
                    bad(key, f"disk {i} of VM {vm.name}: {disk.image} {why}")
                disk = Disk(disk.bus, disk.image, fmt, disk.size_mib)
            disks.append(disk)
        if vm.boot and vm.boot.kernel:
            need(vm.boot.kernel, _key(bp, f"{base}.boot.kernel", "defaults.boot.kernel"), "kernel")
            if vm.boot.initrd:
                need(vm.boot.initrd, _key(bp, f"{base}.boot.initrd", "defaults.boot.initrd"), "initrd")
        for i, iso in enumerate(vm.cdroms):
            key = _key(bp, f"{base}.cdroms[{i}]", f"defaults.cdroms[{i}]")
            if need(iso, key, f"CD-ROM image of VM {vm.name}") and not _is_iso(iso):
                bad(key, f"CD-ROM image of VM {vm.name}: {iso} is not an ISO 9660 image")
        if vm.uefi_vars:
            need(vm.uefi_vars, _key(bp, f"{base}.uefi_vars", "defaults.uefi_vars"), f"UEFI variables of VM {vm.name}")
        if vm.cloud_init and (vm.cloud_init.user_data is not None or vm.cloud_init.user_data_file):
            key = _key(bp, f"{base}.cloud_init.user_data", "defaults.cloud_init.user_data")
            text = vm.cloud_init.user_data
            if vm.cloud_init.user_data_file and need(vm.cloud_init.user_data_file, key, f"user-data of VM {vm.name}"):
                try:
                    text = read_user_data(vm.name, vm.cloud_init.user_data_file)
                except RavelError as exc:
                    bad(key, exc.message)
            if text is not None and key not in reported:  # the VMs of a `count` share one text
                reported.add(key)
                problems.extend(Problem(bp.source, *bp.where(key), key, f"user-data of VM {vm.name}: {why}")
                                for why in check_user_data(text)[:3])
        vms.append(replace(vm, disks=tuple(disks)))
    if problems:
        raise BlueprintError(problems)
    return replace(bp, vms=tuple(vms))


def image_format(path: str, declared: str | None) -> tuple[str | None, str | None]:
    """(format, None) for a disk image, or (declared, why not) when the file is not one."""
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as fh:
            head = fh.read(HEAD)
    except OSError as exc:
        return declared, f"cannot be read: {exc.strerror}"
    found = sniff_format(head)
    if found == "raw":
        if declared not in (None, "raw"):
            return declared, f"is not a {declared} image (its first bytes are not a {declared} header)"
        if size == 0 or size % 512:
            return declared, f"is not a disk image ({size} bytes: not whole 512-byte sectors)"
        return "raw", None
    if declared is not None and declared != found:
        return declared, f"is a {found} image, not {declared} (fix or remove `format`)"
    return found, None


def _is_iso(path: str) -> bool:
    try:
        with open(path, "rb") as fh:
            fh.seek(ISO_MAGIC_AT)
            return fh.read(5) == b"CD001"
    except OSError:
        return False


def _key(bp: Blueprint, own: str, default: str) -> str:
    if own in bp.positions or default not in bp.positions:
        return own
    return default
