"""Files a host needs from this machine (kernels, initrds, base images), for hosts that do not
share this machine's filesystem (SSH and cloud hosts): each sent once, by content, and the
host's desired document rewritten to name the host's copy."""

from __future__ import annotations

import os
import posixpath
from dataclasses import replace
from pathlib import Path
from typing import Callable, Mapping

from ..errors import StoreError
from ..host.desired import VM, Desired
from ..transport.base import Transport
from ..transport.copying import digest_file
from .chains import chain_plan, local_chain, rebase_argv

_FILE_FLAGS = ("-kernel", "-initrd")
_digests: dict[tuple[str, int, int], str] = {}


def referenced_files(desired: Desired) -> list[str]:
    """Paths on this machine that the desired state's VMs read: boot files, base images, and
    the memory state a VM resumes from."""
    found: list[str] = []
    for vm in desired.vms:
        for flag, value in zip(vm.argv, vm.argv[1:]):
            if flag in _FILE_FLAGS:
                found.append(value)
            elif flag == "-drive" and _media_file(value):
                found.append(_media_file(value) or "")
        found += [d.base for d in vm.disks if d.base]
        if vm.incoming:
            found.append(vm.incoming)
    return sorted(set(found))


def _media_file(drive: str) -> str | None:
    """The file of a read-only CD drive (an ISO, a cloud-init seed): sent like a kernel."""
    opts = drive.split(",")
    if "media=cdrom" not in opts:
        return None
    return next((o[5:] for o in opts if o.startswith("file=")), None)


def remote_path(images_dir: str, path: str, digest: str) -> str:
    return posixpath.join(images_dir, f"{digest[:16]}-{os.path.basename(path)}")


def rewrite(desired: Desired, mapping: Mapping[str, str]) -> Desired:
    """Pure: the same desired state with every local file path replaced by the host's copy."""
    def moved(path: str | None) -> str | None:
        return mapping.get(path, path) if path else path

    def arg_here(prev: str, arg: str) -> str:
        if prev in _FILE_FLAGS:
            return mapping.get(arg, arg)
        media = _media_file(arg) if prev == "-drive" else None
        if media and media in mapping:
            return ",".join(f"file={mapping[media]}" if o == f"file={media}" else o for o in arg.split(","))
        return arg

    def vm_here(vm: VM) -> VM:
        argv = tuple(arg_here(prev, a) for prev, a in zip(("",) + vm.argv[:-1], vm.argv))
        return replace(vm, argv=argv, disks=tuple(replace(d, base=moved(d.base)) for d in vm.disks),
                       incoming=moved(vm.incoming))

    return replace(desired, vms=tuple(vm_here(vm) for vm in desired.vms))


def digest(path: str) -> str:
    st = os.stat(path)
    key = (path, st.st_size, st.st_mtime_ns)
    if key not in _digests:
        _digests[key] = digest_file(path).sha256
    return _digests[key]


def ship(t: Transport, desired: Desired, images_dir: str,
         note: Callable[[str], None] = lambda _: None) -> Desired:
    files = referenced_files(desired)
    if not files:
        return desired
    listing = t.run(["ls", "-1", images_dir], check=False)
    present = set(listing.stdout.split()) if listing.rc == 0 else set()
    mapping = {}
    bases = {d.base: d.base_format or "qcow2" for vm in desired.vms for d in vm.disks if d.base}
    for path in files:
        if path in bases:  # a base image may be the top of a chain (a restored snapshot)
            mapping[path] = ship_chain(t, path, bases[path], images_dir, present, note)
            continue
        try:
            remote = remote_path(images_dir, path, digest(path))
        except OSError as exc:
            raise StoreError(f"{t.host}: cannot read {path}: {exc.strerror}") from None
        if posixpath.basename(remote) not in present:
            note(f"sending {os.path.basename(path)} ({os.path.getsize(path) // (1 << 20)} MiB)")
            t.put(Path(path), remote, 0o644)
        mapping[path] = remote
    return rewrite(desired, mapping)


def ship_chain(t: Transport, path: str, fmt: str, images_dir: str, present: set[str],
               note: Callable[[str], None] = lambda _: None) -> str:
    """Send the image at `path` and every file below it that the host lacks, base first, each
    copy naming its parent's host copy; returns the host path of the top. A copy appears under
    its final name only once its header is right, so a name in the listing is a usable file."""
    try:
        plan = chain_plan([(p, f, digest(p)) for p, f in local_chain(path, fmt)], images_dir)
    except OSError as exc:
        raise StoreError(f"{t.host}: cannot read {exc.filename or path}: {exc.strerror}") from None
    for i, s in enumerate(plan):
        name = posixpath.basename(s.remote)
        if name in present:
            continue
        size = os.path.getsize(s.local) // (1 << 20)
        what = f" (layer {i + 1} of {len(plan)})" if len(plan) > 1 else ""
        note(f"sending {os.path.basename(s.local)}{what} ({size} MiB)")
        if s.backing is None:
            t.put(Path(s.local), s.remote, 0o644)
        else:
            staging = posixpath.join(images_dir, f".{name}.staging")
            t.put(Path(s.local), staging, 0o644)
            t.run(rebase_argv(s, staging), timeout=120)
            t.run(["mv", "-f", staging, s.remote], timeout=60)
        present.add(name)
    return plan[-1].remote


def preview(t: Transport, desired: Desired, images_dir: str) -> tuple[Desired, list[str]]:
    """What `ship` would make of `desired` without sending anything (`publish --dry-run`): the
    document naming the host's copies, and the files this machine would send first."""
    files = referenced_files(desired)
    if not files:
        return desired, []
    listing = t.run(["ls", "-1", images_dir], check=False)  # read-only
    present = set(listing.stdout.split()) if listing.rc == 0 else set()
    bases = {d.base: d.base_format or "qcow2" for vm in desired.vms for d in vm.disks if d.base}
    mapping: dict[str, str] = {}
    missing: list[str] = []
    try:
        for path in files:
            if path in bases:
                plan = chain_plan([(p, f, digest(p)) for p, f in local_chain(path, bases[path])], images_dir)
                missing += [s.local for s in plan if posixpath.basename(s.remote) not in present]
                mapping[path] = plan[-1].remote
                continue
            mapping[path] = remote_path(images_dir, path, digest(path))
            if posixpath.basename(mapping[path]) not in present:
                missing.append(path)
    except OSError as exc:
        raise StoreError(f"{t.host}: cannot read {exc.filename or ''}: {exc.strerror}") from None
    return rewrite(desired, mapping), missing
