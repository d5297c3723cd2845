"""Checks that need the filesystem, run before anything is created, reported with positions."""

from __future__ import annotations

import os

from ..errors import BlueprintError, Problem
from ..model.blueprint import Blueprint


def check_files(bp: Blueprint) -> None:
    problems: list[Problem] = []
    reported: set[str] = set()

    def need(path: str, key: str, what: str) -> None:
        if key in reported:
            return
        if not os.path.isfile(path):
            reported.add(key)
            why = "does not exist" if not os.path.exists(path) else "is not a file"
            hint = " (run `make guest` to build the demo guest image)" if "/.cache/guest/" in path else ""
            problems.append(Problem(bp.source, *bp.where(key), key, f"{what} {path} {why}{hint}"))
        elif not os.access(path, os.R_OK):
            reported.add(key)
            problems.append(Problem(bp.source, *bp.where(key), key, f"{what} {path} is not readable"))

    for vm in bp.vms:
        base = f"vms.{vm.group}"
        # a key set through `defaults:` is located at the defaults block
        for i, disk in enumerate(vm.disks):
            if disk.image:
                need(disk.image, _key(bp, f"{base}.disks[{i}].image", f"defaults.disks[{i}].image"), "disk image")
        if vm.boot:
            need(vm.boot.kernel, _key(bp, f"{base}.boot.kernel", "defaults.boot.kernel"), "kernel")
            if vm.boot.initrd:
                need(vm.boot.initrd, _key(bp, f"{base}.boot.initrd", "defaults.boot.initrd"), "initrd")
    if problems:
        raise BlueprintError(problems)


def _key(bp: Blueprint, own: str, default: str) -> str:
    if own in bp.positions or default not in bp.positions:
        return own
    return default
