"""Taking a snapshot of a running app.

Every host of the app prepares (QMP connected, new overlays created) and says ready; then all
are told "go" at once, pause their VMs, freeze each disk's top as a layer, resume, and report.
The pause window is from the first pause to the last resume, across hosts. Frozen layers go to
the store by content hash, in parallel, never twice (layers on hosts that do not share this
filesystem are brought here first, fetch.py); a layer the store already holds is checked first
(integrity.py) and uploaded again when it is damaged; a manifest (the publishable blueprint +
each disk's layer chain with checksums) is written last. Memory states are removed from the
hosts once stored, or when the snapshot fails: they are only ever read from the store.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from .. import faults
from ..errors import CommandFailed, RavelError, StateError, StoreError
from ..events import Emit, Event, quiet
from ..model.blueprint import Blueprint
from ..model.dump import blueprint_dict, to_yaml
from ..paths import Paths
from ..providers.base import AppliedHost, Host
from ..state import AppRecord, VmRecord
from ..store import Store, open_store
from ..transport.hostctl import HostRuntime
from ..transport.hostrun import HostRun
from .fetch import brought_here
from .integrity import checked_all
from .layers import DiskChain, Layer, Manifest, VmImage, check_name, manifest_key, read_manifests
from .pending import Pending
from .machine import machine_signature

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
    layers_checked: int = 0  # layers already in the store, read back and hashed again
    bytes_checked: int = 0
    layers_repaired: int = 0  # damaged in the store, uploaded again

    @property
    def bytes_stored(self) -> int:
        return self.bytes_uploaded + self.manifest_bytes


def default_name(app: str) -> str:
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    return f"{app[:40 - len(stamp) - 1].rstrip('-')}-{stamp}"


def open_target(paths: Paths, app: str, name: str | None, store_url: str | None) -> tuple[str, Store]:
    """The new snapshot's name (checked, or made from the app's) and the store it goes to;
    refused at once when the name is taken."""
    name = check_name(name or default_name(app))
    store = open_store(store_url, paths)
    if store.exists(manifest_key(name)):
        raise StoreError(f"a snapshot named {name!r} already exists in {store.url}",
                         hint="choose another --name, or remove it with `ravel snapshots rm`")
    return name, store


def take_snapshot(paths: Paths, store: Store, name: str, rec: AppRecord, bp: Blueprint,
                  vms: Sequence[VmRecord], hosts: Sequence[AppliedHost],
                  runtime: Callable[[Host], HostRuntime], memory: bool = False,
                  emit: Emit = quiet) -> SnapshotResult:
    """Snapshot app `rec` (its blueprint `bp`, its VMs as recorded, its applied `hosts`, each
    reached through `runtime`) into `store` as `name`. The caller holds the app's lock."""
    app = rec.name
    states = {v.name: v for v in vms}
    requests: dict[str, tuple[AppliedHost, dict[str, Any]]] = {}
    machines: dict[str, tuple[str, ...]] = {}  # what a saved memory state fits
    for h in hosts:
        reqs = []
        for vm in h.desired.vms:
            st = states.get(vm.name)
            if st is None or st.state != "running":
                raise StateError(f"VM {vm.name} of app {app!r} is {st.state if st else 'unknown'}; "
                                 f"a snapshot needs every VM running",
                                 hint=f"ravel start {app} {vm.name}")
            reqs.append({"name": vm.name, "qmp": vm.qmp, "pidfile": vm.pidfile,
                         "disks": [{"path": d.path, "drive": f"disk{i}"} for i, d in enumerate(vm.disks)]})
            machines[vm.name] = machine_signature(vm.argv)
        if reqs:
            requests[h.host.name] = (h, {"tag": f"s{uuid.uuid4().hex[:10]}", "memory": memory,
                                         "go_timeout": GO_TIMEOUT_S, "vms": reqs})
    if not requests:
        raise StateError(f"app {app!r} has no VMs to snapshot")
    pending = Pending(store, name, emit)  # before any pause: a running gc makes this fail first
    faults.point("snapshot.pending")
    reports: dict[str, dict[str, Any]] = {}
    try:
        reports = _freeze({host: (runtime(h.host), req) for host, (h, req) in requests.items()})
        faults.point("snapshot.frozen")
        manifest, files = _manifest(name, app, rec, bp, states, reports, machines)
        emit(Event("snapshot", f"paused {len(manifest.vms)} VMs for {manifest.pause_s * 1000:.0f} ms", done=True))

        def progress(sha: str, size: int, sent: bool) -> None:
            if sent:
                emit(Event("upload", f"layer {sha[:12]} ({size / 2**20:.1f} MiB)"))

        # every layer the store holds is checked before the manifest names it; what is
        # missing or damaged is uploaded from the app's own copy
        started = time.monotonic()
        checks = pending.check({sha: layer.size for sha, layer in manifest.layers().items()})
        read, read_bytes = checked_all(checks.values())
        if read:
            emit(Event("verify", f"{read} layers in the store read back and hashed, {read_bytes / 2**20:.1f} MiB "
                                 f"in {time.monotonic() - started:.1f} s", done=True))
        damaged = {sha: c for sha, c in checks.items() if c.status == "damaged"}
        needed = {sha: p for sha, p in files.items() if not checks[sha].ok}
        # layers on hosts that do not share this filesystem come here first (needed ones only)
        transports = {host: runtime(h.host).t for host, (h, _) in requests.items()}
        with brought_here(needed, reports, transports, paths.cache, emit) as brought:
            uploaded = pending.upload(brought.files, damaged, progress=progress)
        faults.point("snapshot.uploaded")
        manifest_bytes = pending.commit(manifest)
        faults.point("snapshot.committed")
    except BaseException:
        pending.abort()
        raise
    finally:
        _drop_memory_states(reports, runtime, {host: h for host, (h, _) in requests.items()})
    emit(Event("upload", f"{uploaded / 2**20:.1f} MiB new in {store.url}", done=True))
    return SnapshotResult(name, store.url, manifest.pause_s or 0.0, len(manifest.vms), len(files),
                          manifest.total_bytes(), uploaded, manifest_bytes,
                          {h: r["pause"]["seconds"] for h, r in reports.items()},
                          brought.fetched_bytes, len(brought.fetched), read, read_bytes, len(damaged))


def _drop_memory_states(reports: Mapping[str, dict[str, Any]], runtime: Callable[[Host], HostRuntime],
                        hosts: Mapping[str, AppliedHost]) -> None:
    """Remove the memory states the hosts saved (a VM's RAM: as large as the guest's memory),
    stored or not: nothing reads them on the host again."""
    for host, report in reports.items():
        paths = [info["memory"]["path"] for info in report.get("vms", {}).values() if info.get("memory")]
        if paths:
            try:
                runtime(hosts[host].host).t.run(["rm", "-f", "--", *paths], timeout=60, check=False)
            except RavelError:
                pass  # the host is unreachable now; its next snapshot clears old states (host/snapshot.py)


def _freeze(requests: Mapping[str, tuple[HostRuntime, dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    runs: dict[str, HostRun] = {}
    try:
        for host, (rt, req) in requests.items():
            runs[host] = HostRun(host, rt, req)
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


def _manifest(name: str, app: str, rec: AppRecord, bp: Blueprint, states: Mapping[str, VmRecord],
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
    """The store and its snapshots; a damaged manifest is skipped (`listing` says which)."""
    store, manifests, _ = listing(paths, store_url)
    return store, manifests


def listing(paths: Paths, store_url: str | None = None) -> tuple[Store, list[Manifest], list[str]]:
    """The store, its snapshots, and what could not be read (each a problem, skipped)."""
    store = open_store(store_url, paths)
    manifests, problems = read_manifests(store)
    return store, manifests, problems
