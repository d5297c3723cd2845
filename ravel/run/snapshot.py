"""Snapshots of a running app, and their restore for `ravel publish --from`.

take_snapshot: every host of the app prepares (QMP connected, new overlays created) and says
ready; then all are told "go" at once, pause their VMs, freeze each disk's top as a layer,
resume, and report. The pause window is from the first pause to the last resume, across
hosts. Frozen layers go to the store by content hash, in parallel, never twice; a manifest
(the publishable blueprint + each disk's layer chain with checksums) is written last.

restore: fetch each disk's layer chain into the local image directory, verify every sha256,
rebase the chain onto the local copies, and write a blueprint whose disks are the restored
tops, all before anything is created or started. With `--memory`, each VM's saved state is
fetched and verified the same way, after a check that each VM is still the machine its state
was saved from (ravel/render/resume.py); `Lab.publish_snapshot` then resumes the VMs from them.
"""

from __future__ import annotations

import os
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from ..errors import CommandFailed, StateError, StoreError
from ..model.blueprint import Disk
from ..model.dump import blueprint_dict, to_yaml
from ..model.resolve import load_blueprint
from ..paths import Paths
from ..providers import get_provider
from ..providers.base import Host
from ..store import Store, open_store
from ..store.layers import (DiskChain, Layer, Manifest, Pending, VmImage, check_name, fetch_chain,
                            clear_cache_tmp, list_manifests, manifest_key, read_manifest)
from ..render.resume import accel_of, blueprint_signatures, machine_signature, signature_difference
from .events import Event
from .hoststream import HostRun as _HostRun
from .layerfetch import brought_here

READY_TIMEOUT_S = 120.0
REPORT_TIMEOUT_S = 900.0  # hashing a large base image the first time is the slow part
GO_TIMEOUT_S = 60.0


@dataclass
class SnapshotResult:
    name: str
    store: str
    pause_s: float
    vms: int
    layers: int
    bytes_total: int  # every layer the snapshot references
    bytes_uploaded: int  # layer bytes that were new to the store
    manifest_bytes: int
    per_host_pause: dict[str, float] = field(default_factory=dict)
    bytes_fetched: int = 0  # layer bytes brought from hosts that do not share this filesystem
    layers_fetched: int = 0

    @property
    def bytes_stored(self) -> int:
        return self.bytes_uploaded + self.manifest_bytes


def default_name(app: str) -> str:
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    return f"{app[:40 - len(stamp) - 1].rstrip('-')}-{stamp}"


# -- taking a snapshot -------------------------------------------------------------------------

def take_snapshot(lab: Any, app: str, name: str | None = None, memory: bool = False,
                  store_url: str | None = None) -> SnapshotResult:
    """Snapshot `app` (a ravel.run.lab.Lab's app) into the store at `store_url`."""
    name = check_name(name or default_name(app))
    store = open_store(store_url, lab.paths)
    rec = lab.state.require_app(app)
    if store.exists(manifest_key(name)):
        raise StoreError(f"a snapshot named {name!r} already exists in {store.url}",
                         hint="choose another --name, or remove it with `ravel snapshots rm`")
    provider = get_provider(rec.provider, lab.paths)
    with lab.state.lock(app, "snapshot"):
        bp = lab._stored_blueprint(app)
        states = {v.name: v for v in lab.state.vms(app)}
        requests: dict[str, tuple[Host, dict[str, Any]]] = {}
        machines: dict[str, tuple[str, ...]] = {}  # what a saved memory state fits
        for h in lab.state.hosts(app):
            doc = h.extra.get("desired")
            if not doc or not h.ref:
                continue
            vms = []
            for vm in doc["vms"]:
                st = states.get(vm["name"])
                if st is None or st.state != "running":
                    raise StateError(f"VM {vm['name']} of app {app!r} is {st.state if st else 'unknown'}; "
                                     f"a snapshot needs every VM running",
                                     hint=f"ravel start {app} {vm['name']}")
                vms.append({"name": vm["name"], "qmp": vm["qmp"],
                            "disks": [{"path": d["path"], "drive": f"disk{i}"} for i, d in enumerate(vm["disks"])]})
                machines[vm["name"]] = machine_signature(vm["argv"])
            if vms:
                host = Host(app, h.name, h.ref, h.address or "", doc["underlay"]["device"], doc["run_dir"])
                requests[h.name] = (host, {"tag": f"s{uuid.uuid4().hex[:10]}", "memory": memory,
                                           "go_timeout": GO_TIMEOUT_S, "vms": vms})
        if not requests:
            raise StateError(f"app {app!r} has no VMs to snapshot")
        pending = Pending(store, name)  # before any pause: a running gc makes this fail first
        try:
            reports = _freeze(lab, provider, requests)
            manifest, files = _manifest(name, app, rec, bp, states, reports, machines)
            lab.emit(Event("snapshot", f"paused {len(manifest.vms)} VMs for {manifest.pause_s * 1000:.0f} ms", done=True))

            def progress(sha: str, size: int, sent: bool) -> None:
                if sent:
                    lab.emit(Event("upload", f"layer {sha[:12]} ({size / 2**20:.1f} MiB)"))

            # layers on hosts that do not share this filesystem come here first (new ones only)
            transports = {host: lab._runtime(provider, h).t for host, (h, _) in requests.items()}
            with brought_here(files, reports, transports, store, lab.paths.cache, lab.emit) as brought:
                uploaded = pending.upload(brought.files, progress=progress)
            manifest_bytes = pending.commit(manifest)
        except BaseException:
            pending.abort()
            raise
    lab.emit(Event("upload", f"{uploaded / 2**20:.1f} MiB new in {store.url}", done=True))
    return SnapshotResult(name, store.url, manifest.pause_s or 0.0, len(manifest.vms), len(files),
                          manifest.total_bytes(), uploaded, manifest_bytes,
                          {h: r["pause"]["seconds"] for h, r in reports.items()},
                          brought.fetched_bytes, len(brought.fetched))


def _freeze(lab: Any, provider: Any, requests: Mapping[str, tuple[Host, dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    runs: dict[str, _HostRun] = {}
    try:
        for host, (h, req) in requests.items():
            runs[host] = _HostRun(host, lab._runtime(provider, h), req)
        ready = {host: r.next(0, READY_TIMEOUT_S) for host, r in runs.items()}
        failed = {host: doc["error"] for host, doc in ready.items() if not doc.get("ready")}
        if failed:
            for r in runs.values():
                r.send("abort")
            host, why = sorted(failed.items())[0]
            raise CommandFailed(host, "ravel-host snapshot", 1, why)
        for r in runs.values():  # the barrier: every host is prepared, all pause now
            r.send("go")
        reports = {host: r.next(1, REPORT_TIMEOUT_S) for host, r in runs.items()}
    finally:
        for r in runs.values():
            r.finish()
    failed = {host: doc["error"] for host, doc in reports.items() if doc.get("error")}
    if failed:
        host, why = sorted(failed.items())[0]
        raise CommandFailed(host, "ravel-host snapshot", 1, why)
    return reports


def _manifest(name: str, app: str, rec: Any, bp: Any, states: Mapping[str, Any],
              reports: Mapping[str, dict[str, Any]],
              machines: Mapping[str, tuple[str, ...]] | None = None) -> tuple[Manifest, dict[str, Path]]:
    files: dict[str, Path] = {}
    images: dict[str, VmImage] = {}
    for host, report in reports.items():
        for vm, info in report["vms"].items():
            disks = []
            for d in sorted(info["disks"], key=lambda d: d["index"]):
                layers: list[Layer] = []
                below_size = None
                for img in d["chain"]:
                    # an overlay that maps no cluster adds nothing: an unchanged disk's new layer
                    if img["empty"] and layers and below_size == img["virtual_size"]:
                        continue
                    layers.append(Layer(img["sha256"], img["size"], img["format"]))
                    files[img["sha256"]] = Path(img["path"])
                    below_size = img["virtual_size"]
                disks.append(DiskChain(d["index"], d["virtual_size"], tuple(layers)))
            mem = None
            if info.get("memory"):
                m = info["memory"]
                mem = Layer(m["sha256"], m["size"], "qemu-state")
                files[m["sha256"]] = Path(m["path"])
            images[vm] = VmImage(vm, host, tuple(disks), mem, tuple((machines or {}).get(vm, ())) if mem else ())
    starts = [r["pause"]["start"] for r in reports.values()]
    ends = [r["pause"]["end"] for r in reports.values()]
    macs = {vm: {i: mac for i, mac in enumerate(st.detail.get("macs", []))} for vm, st in states.items()}
    text = to_yaml(blueprint_dict(bp, macs=macs), header=f"snapshot {name} of app {app}")
    manifest = Manifest(name, app, text, tuple(images[vm.name] for vm in bp.vms if vm.name in images),
                        created=time.time(), provider=rec.provider, source_blueprint=rec.blueprint_text or "",
                        pause_s=max(ends) - min(starts))
    return manifest, files


# -- listing, removing -------------------------------------------------------------------------

def snapshots(paths: Paths, store_url: str | None = None) -> tuple[Store, list[Manifest]]:
    store = open_store(store_url, paths)
    return store, [read_manifest(store, n) for n in list_manifests(store)]


# -- restoring ---------------------------------------------------------------------------------

def images_dir(paths: Paths) -> Path:
    return paths.data / "images"


@dataclass(frozen=True)
class Restoration:
    blueprint: Path  # publishes the snapshot
    memory: dict[str, Path] = field(default_factory=dict)  # VM -> its saved RAM and device state
    machines: dict[str, tuple[str, ...]] = field(default_factory=dict)  # VM -> what that state fits


def restore(paths: Paths, name: str, store_url: str | None = None, emit: Any = None) -> Path:
    """Fetch and verify every layer of snapshot `name`, then write the blueprint that publishes
    it; returns the blueprint's path. Raises StoreError before anything exists when a layer is
    missing or corrupted."""
    return restore_snapshot(paths, name, store_url, emit).blueprint


def restored_blueprint(paths: Paths, name: str) -> Path:
    """Where the blueprint of a restored snapshot is written: the path its app records."""
    return paths.data / "snapshots" / f"{name}.yaml"


def restore_snapshot(paths: Paths, name: str, store_url: str | None = None, emit: Any = None,
                     check: Any = None) -> Restoration:
    """`restore`, and with a `--memory` snapshot each VM's saved state too, fetched and verified
    like a disk layer, after a check that the restored VMs are the machines those states fit.
    `check(blueprint)` may refuse the snapshot's blueprint before anything is fetched, or return
    the one to publish (another provider's host types)."""
    store = open_store(store_url, paths)
    manifest = read_manifest(store, name)
    cache = images_dir(paths)
    cache.mkdir(parents=True, exist_ok=True, mode=0o700)
    clear_cache_tmp(cache)
    bp = load_blueprint(manifest.blueprint, f"{store.url}/{manifest_key(name)}")
    _check_memory(name, manifest, bp)
    if check is not None:
        bp = check(bp) or bp
    jobs = [(vm, d) for vm in manifest.vms for d in vm.disks]
    jobs += [(vm, None) for vm in manifest.vms if vm.memory]

    def one(job: tuple[VmImage, DiskChain | None]):
        vm, d = job
        if d is None:
            assert vm.memory is not None
            return fetch_chain(store, [vm.memory], cache, f"snapshot {name}: VM {vm.name} memory state")
        return fetch_chain(store, d.layers, cache, f"snapshot {name}: VM {vm.name} disk {d.index}")

    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=max(1, min(4, len(jobs)))) as pool:
        restored = list(pool.map(one, jobs))
    took = time.monotonic() - started
    fetched = sum(r.fetched_bytes for r in restored)
    memory = {vm.name: r.path for (vm, d), r in zip(jobs, restored) if d is None}
    jobs, restored = [j for j in jobs if j[1] is not None], [r for j, r in zip(jobs, restored) if j[1] is not None]
    if emit:
        states = f" and {len(memory)} memory states" if memory else ""
        emit(Event("restore", f"{len(jobs)} disks{states} verified, {fetched / 2**20:.1f} MiB fetched in {took:.1f} s",
                   done=True))
    disks: dict[str, list[Disk]] = {}
    for (vm, d), r in zip(jobs, restored):
        original = bp.vm(vm.name).disks[d.index]
        disks.setdefault(vm.name, []).append(Disk(original.bus, str(r.path), r.format, None))
    for vm in bp.vms:
        if len(disks.get(vm.name, [])) != len(vm.disks):
            raise StoreError(f"snapshot {name}: VM {vm.name} has {len(vm.disks)} disks in its blueprint "
                             f"but {len(disks.get(vm.name, []))} in the manifest")
    out = restored_blueprint(paths, name)
    out.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    text = to_yaml(blueprint_dict(bp, name=name, disks=disks),
                   header=f"published from snapshot {name} ({store.url}) of app {manifest.app}")
    tmp = out.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, out)
    return Restoration(out, memory, {vm.name: vm.machine for vm in manifest.vms if vm.memory})


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
