"""Crashes at every named step (issue 15): `RAVEL_FAULT=STEP:N` ends the CLI there like SIGKILL
(ravel/faults.py). For every step of publish, destroy, snapshot and publish --from: the crash
is seen (exit 137), `ravel list` tells the truth about the half-done app, a re-run converges,
destroy leaves nothing behind (namespace, underlay, QEMU, relay, run or data file, temporary
file, lock, backup), and the state and the store verify. Then the defects of issue 15 that
need real guests: a crashed VM (shown with its signal and console, healed by start and
publish), a damaged state (repaired from its backup), an emptied one (never adopted silently,
recovered from the hosts), and destroy --force with no state at all.

Small busybox guests on two hosts, never waited for (a crash does not care whether a guest has
booted); one RAVEL_HOME for the module, so each publish/destroy cycle costs seconds, and each
cycle covers a publish step and a destroy step (CYCLES). Checks between commands use ravel's
library in this process (what `ravel list`/`status`/`doctor` would say) instead of a CLI
process per look; the commands under test always run as the real CLI.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import signal
import sqlite3
import subprocess
from pathlib import Path
from typing import Iterator

import pytest

from conftest import GUEST, Ravel, force_cleanup, leftovers, namespaces, qemu_pids, wait_until
from ravel.host.proc import qmp_command
from ravel.paths import paths
from ravel.providers import local_expose
from ravel.providers.local import stray_qemus
from ravel.run import state_backup
from ravel.run.lab import Lab, VmStatus
from ravel.snapshot.take import snapshots

PID = os.getpid()
APP = f"flt{PID}"
FROM = f"fltr{PID}"
OTHER = f"flto{PID}"
APPS = (APP, FROM, OTHER)
CRASHED = 137

BLUEPRINT = f"""\
name: faults
networks:
  net: {{subnet: 10.63.0.0/24, gateway: 10.63.0.1}}
defaults:
  memory: 128MiB
  boot: {{kernel: {GUEST}/vmlinuz, initrd: {GUEST}/initrd.img, cmdline: console=ttyS0 quiet}}
vms:
  a:
    disks: [{{size: 16MiB}}]
    nics: [{{network: net, ip: 10.63.0.11}}]
    services: [{{port: 8080}}]
  b:
    disks: [{{size: 16MiB}}]
    nics: [{{network: net, ip: 10.63.0.12}}]
placement:
  host_types: [local-small]
  anti_affinity: [[a, b]]
"""

# Each cycle: a first publish crashed at one step, re-run; on the converged app, re-publishes
# crashed at later steps (their windows differ from a first publish's only in what is already
# recorded), re-run; a destroy crashed at one step, re-run. Nine publish steps and six destroy
# steps in seven publish/destroy cycles.
CYCLES = [
    ("publish.locked", (), "destroy.locked"),
    ("publish.recorded", (), "destroy.marked"),
    ("provision.made", (), "destroy.host:1"),
    ("provision.recorded", (), "destroy.host:2"),
    ("publish.reached", (), "destroy.files"),
    ("publish.applied", (), "destroy.forgotten"),
    ("publish.exposed", ("publish.vms", "publish.done"), None),
]
SNAPSHOT_STEPS = ["snapshot.pending", "snapshot.frozen", "snapshot.uploaded", "snapshot.committed"]


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    home = tmp_path_factory.mktemp("home")
    (home / "faults.yaml").write_text(BLUEPRINT)
    r = Ravel(home)
    try:
        yield r
    finally:
        for app in APPS:
            r("destroy", app, "--yes", "--force", check=False)
        left = [x for app in APPS for x in leftovers(app, home)]
        for app in APPS:
            force_cleanup(app, home)
        assert not left, f"left behind: {left}"


def bp(r: Ravel) -> str:
    return str(r.home / "faults.yaml")


def crash(r: Ravel, step: str, *args: str) -> subprocess.CompletedProcess[str]:
    p = r(*args, check=False, RAVEL_FAULT=step if ":" in step else f"{step}:1")
    assert p.returncode == CRASHED, f"{args} with RAVEL_FAULT={step}: {p.returncode}\n{p.stdout}\n{p.stderr}"
    assert f"crashed at {step if ':' in step else step + ':1'}" in p.stderr
    return p


@contextlib.contextmanager
def library(r: Ravel) -> Iterator[Lab]:
    """ravel's own library on the module's RAVEL_HOME, for the checks: what the CLI would show,
    without a process start per look (the commands under test are always the real CLI)."""
    lab = Lab(paths({"RAVEL_HOME": str(r.home)}))
    try:
        yield lab
    finally:
        lab.close()


def listed(r: Ravel) -> dict[str, str]:
    """App -> its status, as `ravel list` shows it."""
    with library(r) as lab:
        return {h.app: h.status for h in lab.health()}


def status(r: Ravel, app: str) -> dict[str, VmStatus]:
    with library(r) as lab:
        return {v.name: v for v in lab.status(app)}


def state_verifies(r: Ravel, apps: tuple[str, ...]) -> None:
    """The database passes SQLite's own check, `ravel doctor` finds nothing wrong, and each app
    has a backup that is exactly its rows."""
    db = sqlite3.connect(r.home / "state" / "state.db")
    try:
        assert db.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    finally:
        db.close()
    with library(r) as lab:
        check = lab.check_state()
        assert check.sound and sorted(check.apps) == sorted(apps), check
        for app in apps:
            assert state_backup.load(lab.state, app) == lab.state.export_app(app), app
    assert {f.stem for f in (r.home / "state" / "backups").glob("*.json")} == set(apps)


def converged(r: Ravel, app: str = APP) -> dict[str, VmStatus]:
    st = status(r, app)
    assert sorted(st) == ["a", "b"] and all(v.state == "running" for v in st.values()), st
    assert set(qemu_pids(app)) == {"a", "b"}
    assert {v.pid for v in st.values()} == set(qemu_pids(app).values())
    assert listed(r)[app] == "running"
    return st


def nothing_left(r: Ravel, app: str) -> None:
    p = paths({"RAVEL_HOME": str(r.home)})
    found = leftovers(app, r.home)
    found += [f"qemu pid {pid}" for pid in stray_qemus(p.run)()]
    found += [f"relay pid {pid}" for pid in local_expose._strays(f"ravel/{p.tag}/{app}/", None, prefix=True)]
    apps = listed(r)
    assert app not in apps
    others = [a for a in apps if a != app]
    if not others:  # the last app: the underlay goes too
        found += [f"namespace {ns}" for ns in namespaces() if ns == f"rvul-{p.tag}"]
        link = subprocess.run(["ip", "link", "show", "dev", f"rvul{p.tag}"], capture_output=True)
        found += [f"link rvul{p.tag}"] if link.returncode == 0 else []
    for root in (r.home, p.run):
        found += [f"temporary file {f}" for f in Path(root).rglob("*")
                  if re.search(r"\.tmp|^\.fetch-", f.name)]
    found += [f"lock file of {app}"] if (r.home / "state" / "locks" / f"{app}.lock").exists() else []
    found += [f"backup of {app}"] if (r.home / "state" / "backups" / f"{app}.json").exists() else []
    assert not found, found


def snapshot_names(r: Ravel) -> list[str]:
    return [m.name for m in snapshots(paths({"RAVEL_HOME": str(r.home)}))[1]]


def store_verifies(r: Ravel) -> None:
    """Every snapshot in the store reads, and each layer it names is there with its sha256."""
    store, manifests = snapshots(paths({"RAVEL_HOME": str(r.home)}))
    root = r.home / "data" / "store"
    for m in manifests:
        for sha in m.layers():
            assert hashlib.sha256((root / "layers" / sha).read_bytes()).hexdigest() == sha, (m.name, sha)
    assert not [f for f in root.rglob("*") if ".tmp" in f.name]


def vms_not_paused(r: Ravel, app: str) -> None:
    for name, v in status(r, app).items():
        qmp = v.console.rsplit(".", 1)[0] + ".qmp"
        assert qmp_command(qmp, "query-status")["return"]["status"] == "running", name


# -- publish and destroy ----------------------------------------------------------------------------

@pytest.mark.parametrize("first,again,destroy_step", CYCLES,
                         ids=[f"{'+'.join((p, *a))}+{d or 'destroy'}" for p, a, d in CYCLES])
def test_publish_and_destroy_survive_a_crash(lab, first, again, destroy_step):
    r = lab
    for step in (first, *again):
        crash(r, step, "publish", bp(r), "--name", APP)
        if step not in ("publish.locked", "publish.done"):
            assert listed(r)[APP].startswith("broken (publish interrupted"), listed(r)
        r("publish", bp(r), "--name", APP)
        converged(r)
        state_verifies(r, (APP,))
    if destroy_step:
        crash(r, destroy_step, "destroy", APP, "--yes")
        if destroy_step not in ("destroy.locked", "destroy.forgotten"):
            assert listed(r)[APP].startswith("destroying (interrupted"), listed(r)
    p = r("destroy", APP, "--yes", check=False)
    if destroy_step == "destroy.forgotten":  # it was all done but the last step
        assert p.returncode == 7 and f"no app named {APP!r}" in p.stderr, p.stderr
    else:
        assert p.returncode == 0, p.stderr
    nothing_left(r, APP)
    state_verifies(r, ())


# -- snapshot -----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def running(lab):
    lab("publish", bp(lab), "--name", APP)
    converged(lab)
    return lab


@pytest.mark.parametrize("step", SNAPSHOT_STEPS)
def test_snapshot_survives_a_crash(running, step):
    r = running
    name = step.split(".")[1]
    crash(r, step, "snapshot", APP, "--name", name)
    vms_not_paused(r, APP)  # whatever happened, the guests run on
    p = r("snapshot", APP, "--name", name, check=False)
    if step == "snapshot.committed":  # it was complete: taking it again is refused, it is there
        assert p.returncode == 8 and "already exists" in p.stderr, p.stderr
    else:
        assert p.returncode == 0, p.stderr
    assert name in snapshot_names(r)
    store_verifies(r)
    converged(r)
    state_verifies(r, (APP,))


# -- publish --from -------------------------------------------------------------------------------------

def test_publish_from_a_snapshot_survives_a_crash_at_each_of_its_steps(running):
    r = running
    if "base" not in snapshot_names(r):
        r("snapshot", APP, "--name", "base")
    images = r.home / "data" / "images"
    for f in images.glob("*"):  # nothing fetched before: the first crash leaves a layer half-written
        f.unlink()
    crash(r, "restore.fetching", "publish", "--from", "base", "--name", FROM)
    assert list(images.glob(".fetch-*")), "the crash was meant to leave a temporary file"
    assert FROM not in listed(r)  # nothing is created before every layer is verified
    crash(r, "restore.fetched", "publish", "--from", "base", "--name", FROM)  # the re-run, crashed again
    assert not list(images.glob(".fetch-*"))
    r("publish", "--from", "base", "--name", FROM)
    converged(r, FROM)
    state_verifies(r, (APP, FROM))
    r("destroy", FROM, "--yes")
    assert not leftovers(FROM, r.home)
    store_verifies(r)


# -- the defects of issue 15 that need real guests --------------------------------------------------------

def test_a_crashed_vm_is_shown_as_crashed_and_healed(running):
    r = running
    before = qemu_pids(APP)
    os.kill(before["a"], signal.SIGKILL)
    wait_until(lambda: "a" not in qemu_pids(APP), 10, "QEMU of a to end")
    assert listed(r)[APP] == "degraded (1 of 2 VMs down)"
    a = status(r, APP)["a"]
    assert a.state == "crashed" and a.reason == "killed by SIGKILL" and a.ended_at, a
    assert a.tail, "the last console lines"
    text = r("status", APP).stdout
    assert "a crashed: killed by SIGKILL" in text and "last console lines" in text, text
    r("start", APP)
    converged(r)
    assert qemu_pids(APP)["b"] == before["b"]  # only the crashed one was started
    for vm in ("a", "b"):
        os.kill(qemu_pids(APP)[vm], signal.SIGKILL)
    wait_until(lambda: not qemu_pids(APP), 10, "both QEMUs to end")
    assert listed(r)[APP] == "broken (all 2 VMs down)"
    p = r("publish", bp(r), "--name", APP)
    assert "a started again: not running; its QEMU" in p.stderr, p.stderr
    converged(r)


def test_a_damaged_state_names_its_file_and_is_repaired(running):
    r = running
    db = r.home / "state" / "state.db"
    assert not db.with_name("state.db-wal").exists()  # every change is in the file being damaged
    with open(db, "r+b") as f:
        f.seek(4096)
        f.write(b"\xa5" * 8192)
    for args in (["list"], ["status", APP], ["destroy", APP, "--yes"]):
        p = r(*args, check=False)
        assert p.returncode == 7 and f"the state database {db} is damaged" in p.stderr, (args, p.stderr)
        assert "internal error" not in p.stderr and "doctor --repair-state" in p.stderr
    assert "--force" in p.stderr  # destroy says how to go on without the state
    p = r("doctor", "--repair-state")
    assert f"{APP}: restored from its backup" in p.stdout, p.stdout
    converged(r)
    state_verifies(r, (APP,))


def test_an_emptied_state_never_adopts_an_apps_hosts(running):
    r = running
    pids = qemu_pids(APP)
    assert not (r.home / "state" / "state.db-wal").exists()
    (r.home / "state" / "state.db").write_bytes(b"")
    p = r("list", check=False)
    assert p.returncode == 7 and "is empty (0 bytes)" in p.stderr and APP in p.stderr, p.stderr
    for f in (r.home / "state" / "backups").glob("*.json"):  # the worst case: the backups went too
        f.unlink()
    p = r("publish", bp(r), "--name", APP, check=False)
    assert p.returncode == 7, p.stderr
    assert f"app {APP!r} is not in the state, but an app of that name left hosts host-1, host-2" in p.stderr
    assert "publishing would take them over" in p.stderr
    assert qemu_pids(APP) == pids  # nothing was touched
    # another app would be handed the same host ids: refused before it made anything
    p = r("publish", bp(r), "--name", OTHER, check=False)
    assert p.returncode == 4 and f"is still in use by namespace rv-{APP}-host-" in p.stderr, p.stderr
    assert not [ns for ns in namespaces() if ns.startswith(f"rv-{OTHER}-")]
    r("destroy", OTHER, "--yes")
    assert qemu_pids(APP) == pids
    assert listed(r)[APP].startswith("unknown to the state")
    p = r("doctor", "--repair-state")
    assert f"{APP}: recovered from its hosts: 2 hosts (host-1, host-2), 2 VMs (a, b)" in p.stdout, p.stdout
    assert listed(r)[APP] == "running"
    r("publish", bp(r), "--name", APP)  # taken over on purpose now: the same VMs run on
    converged(r)
    assert qemu_pids(APP) == pids
    state_verifies(r, (APP,))


def test_destroy_force_removes_an_app_without_any_state(running):
    r = running
    state = r.home / "state"
    for f in [*state.glob("state.db*"), *(state / "backups").glob("*.json")]:
        f.unlink()
    (state / "state.db").write_bytes(b"\0" * 8192)  # not a database at all
    assert r("destroy", APP, "--yes", check=False).returncode == 7
    p = r("destroy", APP, "--yes", "--force")
    assert "destroyed (2 hosts removed)" in p.stdout
    (state / "state.db").unlink()
    nothing_left(r, APP)
