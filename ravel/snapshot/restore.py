"""Restoring a snapshot on this machine: every layer fetched from the store and its sha256
checked, then a blueprint written that publishes it (`ravel publish --from`). With `--memory`,
each VM's saved state is fetched and verified the same way, after a check that each VM is still
the machine its state was saved from (machine.py); the publish then resumes the VMs from them
(memory.py keeps which VMs still resume).
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

from .. import faults
from ..diskspace import lacking
from ..errors import StoreError
from ..events import Emit, Event, quiet
from ..model.blueprint import Blueprint, Disk
from ..model.dump import blueprint_dict, to_yaml
from ..model.resolve import load_blueprint
from ..paths import Paths, private_dir, write_private
from ..store import open_store
from .layers import (DiskChain, Manifest, VmImage, bytes_to_fetch, clear_cache_tmp, fetch_chain, manifest_key,
                     read_manifest)
from .machine import accel_of, blueprint_signatures, signature_difference


def images_dir(paths: Paths) -> Path:
    return paths.data / "images"


@dataclass(frozen=True)
class Restoration:
    blueprint: Path  # publishes the snapshot
    memory: dict[str, Path] = field(default_factory=dict)  # VM -> its saved RAM and device state
    machines: dict[str, tuple[str, ...]] = field(default_factory=dict)  # VM -> what that state fits


def restore(paths: Paths, name: str, store_url: str | None = None, emit: Emit = quiet) -> Path:
    """Fetch and verify every layer of snapshot `name`, then write the blueprint that publishes
    it; returns the blueprint's path. Raises StoreError before anything exists when a layer is
    missing or corrupted."""
    return restore_snapshot(paths, name, store_url, emit).blueprint


def restored_blueprint(paths: Paths, name: str) -> Path:
    """Where the blueprint of a restored snapshot is written: the path its app records."""
    return paths.data / "snapshots" / f"{name}.yaml"


def restore_snapshot(paths: Paths, name: str, store_url: str | None = None, emit: Emit = quiet,
                     check: Callable[[Blueprint], Blueprint] | None = None) -> Restoration:
    """`restore`, and with a `--memory` snapshot each VM's saved state too, fetched and verified
    like a disk layer, after a check that the restored VMs are the machines those states fit.
    `check(blueprint)` may refuse the snapshot's blueprint before anything is fetched, or return
    the one to publish (another provider's host types)."""
    store = open_store(store_url, paths)
    manifest = read_manifest(store, name)
    cache = private_dir(images_dir(paths))
    clear_cache_tmp(cache)
    bp = _saved_cpu_models(load_blueprint(manifest.blueprint, f"{store.url}/{manifest_key(name)}"), manifest)
    _check_memory(name, manifest, bp)
    if check is not None:
        bp = check(bp)
    jobs = [(vm, d) for vm in manifest.vms for d in vm.disks]
    jobs += [(vm, None) for vm in manifest.vms if vm.memory]
    chains = [d.layers if d is not None else (vm.memory,) for vm, d in jobs]
    short = lacking(cache, bytes_to_fetch(chains, cache))  # type: ignore[arg-type]
    if short:
        raise StoreError(short, hint="nothing was fetched or started; make room there (`ravel destroy` of apps "
                                     "published from snapshots frees their layers' copies)")

    def one(job: tuple[VmImage, DiskChain | None]):
        vm, d = job
        if d is None:
            assert vm.memory is not None
            return fetch_chain(store, [vm.memory], cache, f"snapshot {name}: VM {vm.name} memory state")
        return fetch_chain(store, d.layers, cache, f"snapshot {name}: VM {vm.name} disk {d.index}")

    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=max(1, min(4, len(jobs)))) as pool:
        restored = list(pool.map(one, jobs))
    faults.point("restore.fetched")
    took = time.monotonic() - started
    fetched = sum(r.fetched_bytes for r in restored)
    memory = {vm.name: r.path for (vm, d), r in zip(jobs, restored) if d is None}
    jobs, restored = [j for j in jobs if j[1] is not None], [r for j, r in zip(jobs, restored) if j[1] is not None]
    states = f" and {len(memory)} memory states" if memory else ""
    emit(Event("restore", f"{len(jobs)} disks{states} verified, {fetched / 2**20:.1f} MiB fetched in {took:.1f} s",
               done=True))
    disks: dict[str, list[Disk]] = {}
    uefi_vars: dict[str, str] = {}
    for (vm, d), r in zip(jobs, restored):
        spec = bp.vm(vm.name)
        if d.index == len(spec.disks) and spec.firmware == "uefi":
            uefi_vars[vm.name] = str(r.path)  # its UEFI variable store: the drive after its disks
            continue
        original = spec.disks[d.index]
        disks.setdefault(vm.name, []).append(Disk(original.bus, str(r.path), r.format, None))
    bp = replace(bp, vms=tuple(replace(vm, uefi_vars=uefi_vars.get(vm.name, vm.uefi_vars)) for vm in bp.vms))
    for vm in bp.vms:
        if len(disks.get(vm.name, [])) != len(vm.disks):
            raise StoreError(f"snapshot {name}: VM {vm.name} has {len(vm.disks)} disks in its blueprint "
                             f"but {len(disks.get(vm.name, []))} in the manifest")
    out = restored_blueprint(paths, name)
    write_private(out, to_yaml(blueprint_dict(bp, name=name, disks=disks),
                               header=f"published from snapshot {name} ({store.url}) of app {manifest.app}"))
    return Restoration(out, memory, {vm.name: vm.machine for vm in manifest.vms if vm.memory})


def _saved_cpu_models(bp: Blueprint, manifest: Manifest) -> Blueprint:
    """A VM whose memory was saved resumes only under the CPU model it ran with: the blueprint
    names it, should ravel's default have changed since (render/qemu.py TCG_CPU_MODEL)."""
    saved = {vm.name: vm.machine for vm in manifest.vms if vm.memory and vm.machine}

    def model(vm_name: str) -> str | None:
        return next((e.split(" ", 1)[1] for e in saved.get(vm_name, ()) if e.startswith("-cpu ")), None)

    return replace(bp, vms=tuple(replace(vm, cpu_model=vm.cpu_model or model(vm.name)) for vm in bp.vms))


def _check_memory(name: str, manifest: Manifest, bp: Any) -> None:
    """Before anything is fetched: a snapshot with memory states resumes every VM or none, and
    each VM must be the machine its state was saved from (an edited manifest is not)."""
    saved = {vm.name: vm for vm in manifest.vms if vm.memory}
    if not saved:
        return
    names = [vm.name for vm in bp.vms]
    missing = [n for n in names if n not in saved]
    extra = sorted(set(saved) - set(names))
    if missing or extra:
        what = (f"VM {missing[0]} has no saved memory state" if missing
                else f"a memory state is saved for VM {extra[0]}, which its blueprint does not have")
        raise StoreError(f"snapshot {name}: {what} ({len(saved)} states for {len(names)} VMs)",
                         hint="the manifest no longer matches the snapshot taken; it cannot resume")
    now = blueprint_signatures(bp, name, {n: accel_of(vm.machine) for n, vm in saved.items()})
    for n in names:
        if not saved[n].machine:
            continue  # saved before signatures were recorded: QEMU itself is the check
        diff = signature_difference(saved[n].machine, now[n])
        if diff:
            raise StoreError(f"snapshot {name}: VM {n} is not the machine its memory state was saved from: {diff}",
                             hint="the blueprint in the manifest was changed; the state cannot be resumed")
