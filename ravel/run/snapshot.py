"""Snapshots of a running app, and their restore for `ravel publish --from`.

take_snapshot: every host of the app prepares (QMP connected, new overlays created) and says
ready; then all are told "go" at once, pause their VMs, freeze each disk's top as a layer,
resume, and report. The pause window is from the first pause to the last resume, across
hosts. Frozen layers go to the store by content hash, in parallel, never twice; a manifest
(the publishable blueprint + each disk's layer chain with checksums) is written last.

restore: fetch each disk's layer chain into the local image directory, verify every sha256,
rebase the chain onto the local copies, and write a blueprint whose disks are the restored
tops, all before anything is created or started.
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from ..errors import CommandFailed, StateError, StoreError, TransportError
from ..model.blueprint import Disk
from ..model.dump import blueprint_dict, to_yaml
from ..model.resolve import load_blueprint
from ..paths import Paths
from ..providers import get_provider
from ..providers.base import Host
from ..store import Store, open_store
from ..store.layers import (DiskChain, Layer, Manifest, Pending, VmImage, check_name, fetch_chain,
                            clear_cache_tmp, list_manifests, manifest_key, read_manifest)
from ..transport.hostctl import HostRuntime
from ..transport.netns import NamespaceTransport
from .events import Event

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

    @property
    def bytes_stored(self) -> int:
        return self.bytes_uploaded + self.manifest_bytes


def default_name(app: str) -> str:
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    return f"{app[:40 - len(stamp) - 1].rstrip('-')}-{stamp}"


# -- taking a snapshot -------------------------------------------------------------------------

class _HostRun:
    """One host's `snapshot` process, driven line by line."""

    def __init__(self, host: str, runtime: HostRuntime, request: dict[str, Any]) -> None:
        self.host = host
        t = runtime.t
        argv = [runtime.python, runtime.pyz, "snapshot"]
        if isinstance(t, NamespaceTransport):
            full = ["ip", "netns", "exec", t.namespace, *argv]
        else:
            raise TransportError(f"{host}: snapshots need a transport that streams (local namespaces for now)")
        self.proc = subprocess.Popen(full, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True, bufsize=1)
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        self.lines: list[dict[str, Any]] = []
        self.cond = threading.Condition()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            try:
                doc = json.loads(line)
            except ValueError:
                doc = {"error": f"host runtime said: {line.strip()[:200]}"}
            with self.cond:
                self.lines.append(doc)
                self.cond.notify_all()
        with self.cond:
            self.lines.append({"error": "exited", "_eof": True})
            self.cond.notify_all()

    def next(self, index: int, timeout: float) -> dict[str, Any]:
        with self.cond:
            if not self.cond.wait_for(lambda: len(self.lines) > index, timeout):
                return {"error": f"no answer within {timeout:.0f} s"}
            doc = self.lines[index]
        if doc.get("_eof"):
            err = self.proc.stderr.read() if self.proc.stderr else ""
            tail = err.strip().splitlines()[-1] if err.strip() else "no output"
            return {"error": f"host runtime exited: {tail}"}
        return doc

    def send(self, word: str) -> None:
        try:
            assert self.proc.stdin is not None
            self.proc.stdin.write(word + "\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            pass

    def finish(self) -> None:
        try:
            if self.proc.stdin:
                self.proc.stdin.close()
        except OSError:
            pass
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)


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
            if vms:
                host = Host(app, h.name, h.ref, h.address or "", doc["underlay"]["device"], doc["run_dir"])
                requests[h.name] = (host, {"tag": f"s{uuid.uuid4().hex[:10]}", "memory": memory,
                                           "go_timeout": GO_TIMEOUT_S, "vms": vms})
        if not requests:
            raise StateError(f"app {app!r} has no VMs to snapshot")
        pending = Pending(store, name)  # before any pause: a running gc makes this fail first
        try:
            reports = _freeze(lab, provider, requests)
            manifest, files = _manifest(name, app, rec, bp, states, reports)
            lab.emit(Event("snapshot", f"paused {len(manifest.vms)} VMs for {manifest.pause_s * 1000:.0f} ms", done=True))

            def progress(sha: str, size: int, sent: bool) -> None:
                if sent:
                    lab.emit(Event("upload", f"layer {sha[:12]} ({size / 2**20:.1f} MiB)"))

            uploaded = pending.upload(files, progress=progress)
            manifest_bytes = pending.commit(manifest)
        except BaseException:
            pending.abort()
            raise
    lab.emit(Event("upload", f"{uploaded / 2**20:.1f} MiB new in {store.url}", done=True))
    return SnapshotResult(name, store.url, manifest.pause_s or 0.0, len(manifest.vms), len(files),
                          manifest.total_bytes(), uploaded, manifest_bytes,
                          {h: r["pause"]["seconds"] for h, r in reports.items()})


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
              reports: Mapping[str, dict[str, Any]]) -> tuple[Manifest, dict[str, Path]]:
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
            images[vm] = VmImage(vm, host, tuple(disks), mem)
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


def restore(paths: Paths, name: str, store_url: str | None = None, emit: Any = None) -> Path:
    """Fetch and verify every layer of snapshot `name`, then write the blueprint that publishes
    it; returns the blueprint's path. Raises StoreError before anything exists when a layer is
    missing or corrupted."""
    store = open_store(store_url, paths)
    manifest = read_manifest(store, name)
    cache = images_dir(paths)
    cache.mkdir(parents=True, exist_ok=True, mode=0o700)
    clear_cache_tmp(cache)
    bp = load_blueprint(manifest.blueprint, f"{store.url}/{manifest_key(name)}")
    jobs = [(vm, d) for vm in manifest.vms for d in vm.disks]

    def one(job: tuple[VmImage, DiskChain]):
        vm, d = job
        return fetch_chain(store, d.layers, cache, f"snapshot {name}: VM {vm.name} disk {d.index}")

    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=max(1, min(4, len(jobs)))) as pool:
        restored = list(pool.map(one, jobs))
    took = time.monotonic() - started
    fetched = sum(r.fetched_bytes for r in restored)
    if emit:
        emit(Event("restore", f"{len(jobs)} disks verified, {fetched / 2**20:.1f} MiB fetched in {took:.1f} s",
                   done=True))
    disks: dict[str, list[Disk]] = {}
    for (vm, d), r in zip(jobs, restored):
        original = bp.vm(vm.name).disks[d.index]
        disks.setdefault(vm.name, []).append(Disk(original.bus, str(r.path), r.format, None))
    for vm in bp.vms:
        if len(disks.get(vm.name, [])) != len(vm.disks):
            raise StoreError(f"snapshot {name}: VM {vm.name} has {len(vm.disks)} disks in its blueprint "
                             f"but {len(disks.get(vm.name, []))} in the manifest")
    out = paths.data / "snapshots" / f"{name}.yaml"
    out.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    text = to_yaml(blueprint_dict(bp, name=name, disks=disks),
                   header=f"published from snapshot {name} ({store.url}) of app {manifest.app}")
    tmp = out.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, out)
    return out
