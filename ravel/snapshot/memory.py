"""Which VMs of an app still resume from a saved memory state rather than boot.

`ravel publish --from` a `--memory` snapshot records, when it creates the app, each VM's
verified state file (``<data>/apps/<app>/resume.json``, so `destroy` takes it along). A VM
leaves the list once its host has started it, so a re-publish, `stop` and `start` boot from the
disks; a publish interrupted before a VM started resumes that VM when run again. The host
runtime keeps its own record too (ravel/host/resume.py), so a VM never resumes twice on disks
that moved on, even if this list was not updated in time.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping

from ..errors import StateError
from ..paths import Paths, write_private
from ..host.desired import Desired
from .machine import machine_signature, signature_difference

FILE = "resume.json"
_lock = threading.Lock()  # hosts are applied in parallel threads


@dataclass(frozen=True)
class Resume:
    state: str  # the saved RAM and device state, on this machine
    machine: tuple[str, ...] = ()  # the machine it fits (machine.machine_signature)


def _path(paths: Paths, app: str) -> Path:
    return paths.app_data(app) / FILE


def pending(paths: Paths, app: str) -> dict[str, Resume]:
    try:
        doc = json.loads(_path(paths, app).read_text())
    except FileNotFoundError:
        return {}
    except ValueError as exc:
        raise StateError(f"{_path(paths, app)} is not valid JSON: {exc}",
                         hint=f"remove it to boot the VMs of {app!r} from their disks instead") from None
    return {str(vm): Resume(str(r["state"]), tuple(r.get("machine") or ())) for vm, r in doc.items()}


def _write(paths: Paths, app: str, entries: Mapping[str, Resume]) -> None:
    path = _path(paths, app)
    if not entries:
        path.unlink(missing_ok=True)
        return
    write_private(path, json.dumps({vm: {"state": r.state, "machine": list(r.machine)}
                                    for vm, r in sorted(entries.items())}, indent=1) + "\n")


def record(paths: Paths, app: str, entries: Mapping[str, Resume]) -> None:
    with _lock:
        _write(paths, app, entries)


def started(paths: Paths, app: str, vms: Iterable[str]) -> None:
    """These VMs run now (resumed, or booted because their host would not resume them)."""
    with _lock:
        left = pending(paths, app)
        gone = [vm for vm in vms if vm in left]
        if gone:
            _write(paths, app, {vm: r for vm, r in left.items() if vm not in gone})


def check_machines(entries: Mapping[str, Resume], desired: Mapping[str, Desired]) -> None:
    """Raises StateError, before any VM starts, when a rendered VM is not the machine its state
    was saved from (the accelerator is known only now: a state saved under TCG does not load
    under KVM)."""
    for d in desired.values():
        for vm in d.vms:
            r = entries.get(vm.name)
            if r is None:
                continue
            diff = signature_difference(r.machine, machine_signature(vm.argv)) if r.machine else None
            if diff:
                raise StateError(f"VM {vm.name} cannot resume from its memory state on {d.host}: {diff}",
                                 hint="destroy the app and publish the snapshot on hosts like the source's")
