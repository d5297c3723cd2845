"""Effects: run the actions ``reconcile`` planned, and report.

``apply_desired``, ``observe`` and ``destroy`` each return a JSON-ready report dict; none of them
prints or exits (``commands`` does). Every command and wait is bounded (see ``proc``).
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import shutil
import time
from contextlib import contextmanager
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

from . import ksm, netem, proc, ready, resume, services, snapshot, supervise
from .desired import Desired
from .facts import (
    OWNED_FILE, Facts, Owned, OwnedVM, argv_sha256, gather, owned_document,
)
from .reconcile import Action, problems, reconcile, teardown

LOCK_TIMEOUT = 60.0
DISK_TIMEOUT = 300.0
SUPERVISOR_WAIT = 2.0
TAIL_LINES = 5  # a crashed VM's last console lines, as status shows them
# a failure in any of these aborts the rest of the plan; VM actions are independent
VM_KINDS = ("vm.stop", "vm.remove", "disk.delete", "vm.start", "vm.cont", "tap.impair", "vm.link")


class ActionFailed(Exception):
    pass


# -- helpers ---------------------------------------------------------------------------------------

@contextmanager
def _locked(run_dir: str, timeout: float = LOCK_TIMEOUT) -> Iterator[None]:
    """Hold an exclusive flock on the run_dir directory itself (bounded wait)."""
    try:
        fd = os.open(run_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except FileNotFoundError:
        yield
        return
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                    raise
                if time.monotonic() >= deadline:
                    raise ActionFailed(f"another ravel.host run holds the lock on {run_dir} "
                                       f"(waited {timeout:g} s)") from None
                time.sleep(0.1)
        yield
    finally:
        os.close(fd)


def _save_owned(app: str, run_dir: str, owned: Owned) -> None:
    if not os.path.isdir(run_dir):
        return
    doc = owned_document(app, owned)
    path = os.path.join(run_dir, OWNED_FILE)
    try:
        with open(path) as f:
            if json.load(f) == doc:
                return
    except (OSError, ValueError):
        pass
    proc.write_json_atomic(path, doc)


def _owned_before(desired: Desired, old: Owned) -> Owned:
    """Owned state written BEFORE any change: old + everything we may create now."""
    links = dict(old.links)
    links.update(desired.link_kinds())
    vms = dict(old.vms)
    for vm in desired.vms:
        prev = old.vms.get(vm.name)
        disks = list(prev.disks) if prev else []
        disks += [d.path for d in vm.disks if d.path not in disks]
        vms[vm.name] = OwnedVM(pidfile=vm.pidfile, qmp=vm.qmp, disks=tuple(disks))
    return Owned(links=links, vms=vms)


def _owned_after(desired: Desired, before: Owned, facts: Facts) -> Owned:
    """Owned state AFTER the run: desired + whatever old item is still there (failed removal)."""
    want = desired.link_kinds()
    links = dict(want)
    for name, kind in before.links.items():
        link = facts.links.get(name)
        if name not in want and link is not None and link.kind == kind:
            links[name] = kind
    vms: Dict[str, OwnedVM] = {}
    wanted_disks = {d.path for vm in desired.vms for d in vm.disks}
    for vm in desired.vms:
        prev = before.vms.get(vm.name)
        left = [p for p in (prev.disks if prev else ()) if p not in wanted_disks
                and os.path.exists(p)]
        vms[vm.name] = OwnedVM(vm.pidfile, vm.qmp, tuple([d.path for d in vm.disks] + left))
    for name, prev in before.vms.items():
        f = facts.vms.get(name)
        if name not in vms and f is not None and (f.running or f.files):
            vms[name] = prev
    return Owned(links=links, vms=vms)


def _vms_report(desired: Optional[Desired], facts: Facts) -> Dict[str, Dict[str, Any]]:
    names = [vm.name for vm in desired.vms] if desired else sorted(facts.vms)
    out = {}
    for name in names:
        f = facts.vms.get(name)
        out[name] = {"running": bool(f and f.running), "pid": f.pid if f and f.running else None}
    return out


# -- executing one action ----------------------------------------------------------------------

def execute(action: Action) -> str:
    """Perform one action; returns a short detail, raises ActionFailed with a clear message."""
    try:
        return _execute(action)
    except proc.CommandFailed as exc:
        raise ActionFailed(str(exc)) from None
    except OSError as exc:
        raise ActionFailed(f"{exc.filename or ''}: {exc.strerror or exc}".lstrip(": ")) from None


def _execute(action: Action) -> str:
    kind, p = action.kind, action.params
    if kind.startswith("router."):
        return services.execute(kind, action.argv, p)
    if kind == "ksm.on":
        return ksm.turn_on(p["run_dir"])
    if kind == "ksm.release":
        return ksm.release(p["run_dir"])
    if kind in ("run_dir.create", "run_dir.chmod"):
        os.makedirs(p["path"], mode=p["mode"], exist_ok=True)
        os.chmod(p["path"], p["mode"])
        return ""
    if kind == "disk.create":
        if os.path.lexists(p["path"]):
            return "already exists; left untouched"
        os.makedirs(os.path.dirname(p["path"]), mode=0o700, exist_ok=True)
        for argv in action.argv:
            proc.run(argv, timeout=DISK_TIMEOUT)
        return ""
    if kind == "tap.impair":
        return netem.set_impair(p["run_dir"], p["tap"], p["want"], [tuple(c) for c in p["cmds"]],
                                p.get("mode") or "netem", p.get("stop"))
    if kind == "vm.link":
        try:
            return netem.set_links(p["run_dir"], p["name"], p["qmp"], p["pidfile"], p["down"], p["netdevs"])
        except proc.QMPError as exc:
            raise ActionFailed(str(exc)) from None
    if kind == "link.delete":
        try:
            proc.run(action.argv[0])
        except proc.CommandFailed as exc:
            if "Cannot find device" in exc.stderr:
                return "already gone"
            raise
        return ""
    if action.argv:
        for argv in action.argv:
            proc.run(argv)
        return ""
    if kind == "vm.stop":
        detail = "not running"
        if p.get("pid") and p.get("argv"):
            waiter = supervise.supervisor_of(p["pid"])
            detail = proc.stop_qemu(p["pid"], p["argv"], p.get("qmp"), shutdown_s=float(p.get("shutdown_s") or 0))
            if waiter:  # it writes the VM's exit record now: done before its files are removed
                proc.wait_gone(waiter, SUPERVISOR_WAIT)
        pidfile = p.get("pidfile") or ""
        if not proc.is_ours(proc.read_pidfile(pidfile), p.get("argv") or ()):
            for path in (pidfile, p.get("qmp")):
                if path:
                    proc.unlink_quiet(path)
            # QEMU is gone: a disk snapshotted while it ran gets its live overlay back in place
            moved = snapshot.settle(snapshot.drive_files(p.get("argv") or ()))
            if moved:
                detail += "; disk overlays settled: " + ", ".join(moved)
        return detail
    if kind == "vm.remove":
        removed = []
        for path in p["files"]:
            if os.path.isdir(path) and not os.path.islink(path):
                continue  # never a directory
            if proc.unlink_quiet(path):
                removed.append(os.path.basename(path))
        return "removed " + ", ".join(removed) if removed else "nothing left to remove"
    if kind == "disk.delete":
        proc.unlink_quiet(p["path"])
        return ""
    if kind == "vm.start":
        return _start_vm(p)
    if kind == "vm.cont":
        return _resumed(lambda: resume.finish(p["record"], p["record_doc"], p["name"], p["qmp"]))
    if kind == "run_dir.delete":
        return _remove_run_dir(p["path"])
    raise ActionFailed(f"unknown action kind {kind!r}")


def _start_vm(p: Dict[str, Any]) -> str:
    argv, pidfile, qmp = p["argv"], p["pidfile"], p["qmp"]
    old = proc.read_pidfile(pidfile)
    if old and (proc.is_ours(old, argv) or proc.is_ours(old, resume.resume_argv(argv))):
        return f"already running as pid {old}"
    for path in (pidfile, qmp):
        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
        proc.unlink_quiet(path)  # stale: QEMU is not running with this argv
    snapshot.settle(snapshot.drive_files(argv))  # after a snapshot, if QEMU ended on its own
    ready.mark_boot(resume.console_log(argv))  # readiness reads only what this boot prints
    if p.get("incoming"):
        return _resumed(lambda: resume.start(p))
    # the record is written first: it is the identity the next run checks /proc against
    proc.write_json_atomic(p["record"], {"sha256": p["sha256"], "argv": argv, "pidfile": pidfile,
                                     "qmp": qmp})
    try:
        pid = proc.start_qemu(argv, pidfile)
    except proc.CommandFailed:
        if not proc.is_ours(proc.read_pidfile(pidfile), argv):
            for path in (pidfile, qmp):  # left behind by a QEMU that failed during init
                proc.unlink_quiet(path)
        raise
    return f"pid {pid}"


def _resumed(step: Any) -> str:
    try:
        return step()
    except resume.ResumeFailed as exc:
        raise ActionFailed(str(exc)) from None


def _remove_run_dir(path: str) -> str:
    norm = os.path.normpath(path)
    if not os.path.isabs(norm) or len([c for c in norm.split("/") if c]) < 2:
        raise ActionFailed(f"refusing to delete {path!r}: run_dir must be at least two levels "
                           "below /")
    if not os.path.lexists(norm):
        return "already gone"
    if os.path.islink(norm) or not os.path.isdir(norm):
        raise ActionFailed(f"refusing to delete {path!r}: not a directory")
    shutil.rmtree(norm)
    return ""


def _run_plan(plan: Sequence[Action], abort_kinds_before_vm: bool
              ) -> Tuple[List[Dict[str, Any]], List[str]]:
    done: List[Dict[str, Any]] = []
    errors: List[str] = []
    for i, action in enumerate(plan):
        entry = dict(action.brief())
        try:
            detail = execute(action)
            entry["ok"] = True
        except ActionFailed as exc:
            detail = str(exc)
            entry["ok"] = False
            errors.append(f"{action.kind} {action.target}: {detail}")
        if detail:
            entry["detail"] = detail
        done.append(entry)
        if not entry["ok"] and abort_kinds_before_vm and action.kind not in VM_KINDS:
            skipped = len(plan) - i - 1
            if skipped:
                errors.append(f"stopped after this failure; {skipped} later action(s) not tried")
            break
    return done, errors


# -- the three operations ----------------------------------------------------------------------

def apply_desired(desired: Desired) -> Dict[str, Any]:
    """Reconcile this host to ``desired``; the report says what was done and what is left."""
    report: Dict[str, Any] = {"app": desired.app, "host": desired.host, "converged": False,
                              "actions": [], "pending": [], "vms": {}, "errors": []}
    pre: List[Dict[str, Any]] = []
    if not os.path.isdir(desired.run_dir):
        create = Action("run_dir.create", desired.run_dir, "missing",
                        params={"path": desired.run_dir, "mode": 0o700})
        done, errors = _run_plan([create], True)
        pre.extend(done)
        if errors:
            report.update(actions=pre, errors=errors)
            return report
    try:
        with _locked(desired.run_dir):
            facts = gather(desired)
            found = problems(desired, facts)
            if found:
                report.update(actions=pre, errors=found,
                              pending=[a.brief() for a in reconcile(desired, facts)],
                              vms=_vms_report(desired, facts))
                return report
            plan = reconcile(desired, facts)
            before = _owned_before(desired, facts.owned)
            _save_owned(desired.app, desired.run_dir, before)
            done, errors = _run_plan(plan, True)
            after = gather(desired)
            _save_owned(desired.app, desired.run_dir, _owned_after(desired, before, after))
            pending = reconcile(desired, after)
            if pending and not errors:
                errors.append("not converged after apply: still needed: " + "; ".join(
                    f"{a.kind} {a.target} ({a.reason})" for a in pending))
            report.update(actions=pre + done, errors=errors,
                          pending=[a.brief() for a in pending], vms=_vms_report(desired, after),
                          converged=not pending and not errors)
    except (ActionFailed, proc.CommandFailed, OSError) as exc:
        report["errors"].append(str(exc))
        report["actions"] = pre + report["actions"]
    return report


def observe(desired: Desired) -> Dict[str, Any]:
    """What exists versus what is desired; changes nothing."""
    facts = gather(desired)
    found = problems(desired, facts)
    pending = reconcile(desired, facts)
    want = desired.link_kinds()
    links = {}
    for name in sorted(set(want) | set(facts.owned.links)):
        link = facts.links.get(name)
        links[name] = {
            "wanted": want.get(name), "owned": name in facts.owned.links,
            "kind": link.kind if link else None, "mtu": link.mtu if link else None,
            "master": link.master if link else None, "up": link.up if link else None,
        }
        if link and link.kind == "vxlan":
            links[name].update(vni=link.vni, local=link.local, learning=link.learning)
    if desired.underlay:
        link = facts.links.get(desired.underlay.device)
        underlay = {"device": desired.underlay.device, "exists": link is not None,
                    "mtu": link.mtu if link else None, "wanted_mtu": desired.underlay.mtu}
    else:
        underlay = None
    vms = {}
    wanted = {vm.name: vm for vm in desired.vms}
    for name, f in sorted(facts.vms.items()):
        vm = wanted.get(name)
        vms[name] = {
            "wanted": ("running" if vm.running else "stopped") if vm else "absent",
            "running": f.running, "pid": f.pid if f.running else None,
            "argv_current": bool(vm and f.record and f.record.sha256 ==
                                 argv_sha256(vm.argv)) if f.running else None,
            "note": f.note,
        }
        if vm and vm.running and not f.running:  # how it ended, and what its console said last
            log = resume.console_log(vm.argv)
            vms[name].update(ended=f.ended, reason=supervise.describe(f.ended) if f.record else "never started",
                             tail=ready.last_lines(ready.this_boot(log), TAIL_LINES) if log else [])
    return {
        "app": desired.app, "host": desired.host,
        "converged": not pending and not found,
        "pending": [a.brief() for a in pending], "errors": found,
        "run_dir": {"path": facts.run_dir, "exists": facts.run_dir_exists,
                    "mode": oct(facts.run_dir_mode) if facts.run_dir_mode is not None else None},
        "underlay": underlay, "links": links,
        "fdb": {k: sorted([m, d] for m, d in v) for k, v in sorted(facts.fdb.items())},
        "disks": {d.path: facts.exists(d.path) for vm in desired.vms for d in vm.disks},
        "vms": vms,
    }


def destroy(app: str, run_dir: str, prefixes: Sequence[str] = (),
            desired: Optional[Desired] = None) -> Dict[str, Any]:
    """Remove every VM process, link and file of ``app`` on this host. Idempotent."""
    target = desired or Desired(app=app, run_dir=run_dir)
    report: Dict[str, Any] = {"app": app, "run_dir": run_dir, "converged": False,
                              "actions": [], "pending": [], "errors": []}
    try:
        with _locked(run_dir):
            facts = gather(target)
            owned_app = _owned_app(run_dir)
            if owned_app and owned_app != app:
                report["errors"].append(f"{run_dir} belongs to app {owned_app!r}, not {app!r}; "
                                        "nothing removed")
                return report
            plan = teardown(facts, desired, prefixes)
            done, errors = _run_plan(plan, False)
        after = gather(target)
        pending = teardown(after, desired, prefixes)
        if pending and not errors:
            errors.append("not everything was removed: " + "; ".join(
                f"{a.kind} {a.target}" for a in pending))
        report.update(actions=done, errors=errors, pending=[a.brief() for a in pending],
                      converged=not pending and not errors)
    except (ActionFailed, proc.CommandFailed, OSError) as exc:
        report["errors"].append(str(exc))
    return report


def _owned_app(run_dir: str) -> Optional[str]:
    try:
        with open(os.path.join(run_dir, OWNED_FILE)) as f:
            doc = json.load(f)
        return str(doc.get("app")) if isinstance(doc, dict) and doc.get("app") else None
    except (OSError, ValueError):
        return None


__all__ = ["apply_desired", "observe", "destroy", "execute", "ActionFailed"]
