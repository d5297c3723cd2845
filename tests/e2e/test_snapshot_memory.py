"""`ravel snapshot --memory` restored by `ravel publish --from`: every VM resumes where it was.

One 2-VM app is published, its guests keep something only in RAM (a file in the initramfs, a
shell variable, a background process), it is snapshotted with its memory and destroyed; the
snapshot is published as a new app whose guests still have all of it, with an uptime that
went on and no boot on their consoles. A corrupted memory layer and an edited manifest are
refused before anything exists; a re-publish changes nothing; stop and start boot from disk; a
publish interrupted before the VMs started resumes them when run again, over SSH (the state
files are sent to the hosts).
"""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path

import pytest

from conftest import GUEST, Ravel, force_cleanup, leftovers, namespaces, qemu_pids, ready_count, wait_until

PID = os.getpid()
SRC = f"msrc{PID}"
SNAP = f"mem{PID}"
RESTORED = f"mres{PID}"
BROKEN = f"mbad{PID}"
APPS = (SRC, RESTORED, BROKEN)

BLUEPRINT = f"""\
name: memsrc
networks:
  lan: {{subnet: 10.43.0.0/24}}
defaults:
  memory: 128MiB
  boot: {{kernel: {GUEST}/vmlinuz, initrd: {GUEST}/initrd.img, cmdline: console=ttyS0 quiet}}
vms:
  a:
    disks: [{{size: 16MiB}}]
    nics: [{{network: lan, ip: 10.43.0.11}}]
  b:
    disks: [{{size: 16MiB}}]
    nics: [{{network: lan, ip: 10.43.0.12}}]
"""


def sh(r: Ravel, app: str, vm: str, cmd: str, timeout: float = 60) -> str:
    with r.console(app, vm) as con:
        return con.check(cmd, timeout=timeout)


def uptime(r: Ravel, app: str, vm: str) -> float:
    return float(sh(r, app, vm, "cat /proc/uptime").split()[0])


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """The source app, marked in RAM, snapshotted with its memory, then destroyed."""
    home = tmp_path_factory.mktemp("home")
    bp = home / "memsrc.yaml"
    bp.write_text(BLUEPRINT)
    r = Ravel(home)
    try:
        r("publish", str(bp), "--name", SRC, "--wait", "--timeout", "240")
        marks = {}
        for vm in ("a", "b"):
            token = f"RAM-{vm}-{PID}-{time.monotonic_ns()}"
            # nothing of this is on a disk: the root is the initramfs, the variable lives in
            # the console's shell, the sleeper is a process
            sh(r, SRC, vm, f"echo {token} > /ram-marker; RAMVAR={token}; "
                           f"sleep 100000 </dev/null >/dev/null 2>&1 & echo $! > /sleeper")
            marks[vm] = token
        before = {vm: uptime(r, SRC, vm) for vm in ("a", "b")}
        snap = json.loads(r("snapshot", SRC, "--memory", "--name", SNAP, "--json").stdout)
        r("destroy", SRC, "--yes")  # the restored app gets the CPUs
        yield r, marks, before, snap
    finally:
        for app in APPS:
            r("destroy", app, "--yes", check=False)
        left = [x for app in APPS for x in leftovers(app, home)]
        for app in APPS:
            force_cleanup(app, home)
        assert not left, f"left behind: {left}"


def manifest_of(r: Ravel, name: str) -> dict:
    return json.loads((r.home / "data" / "store" / "manifests" / f"{name}.json").read_text())


def test_snapshot_stores_each_vms_memory_and_machine(saved):
    r, _, _, snap = saved
    m = manifest_of(r, SNAP)
    assert [vm["name"] for vm in m["vms"]] == ["a", "b"]
    for vm in m["vms"]:
        assert vm["memory"]["format"] == "qemu-state" and vm["memory"]["size"] > 1 << 20
        assert "-m 128M" in vm["machine"] and "-accel tcg" in vm["machine"]
    assert snap["vms"] == 2


def test_corrupted_memory_state_is_caught_before_anything_starts(saved):
    r, _, _, _ = saved
    sha = manifest_of(r, SNAP)["vms"][1]["memory"]["sha256"]
    blob = r.home / "data" / "store" / "layers" / sha
    original = blob.read_bytes()
    data = bytearray(original)
    data[len(data) // 3] ^= 0x10
    blob.write_bytes(bytes(data))
    try:
        p = r("publish", "--from", SNAP, "--name", BROKEN, check=False)
    finally:
        blob.write_bytes(original)
    assert p.returncode == 8, p.stderr
    assert f"VM b memory state: layer {sha[:12]}" in p.stderr and "corrupted" in p.stderr, p.stderr
    assert not any(ns.startswith(f"rv-{BROKEN}-") for ns in namespaces())
    assert BROKEN not in r("list").stdout and not qemu_pids(BROKEN)


def test_an_edited_manifest_is_refused_before_anything_is_fetched(saved):
    r, _, _, _ = saved
    edited = manifest_of(r, SNAP)
    edited["name"] = f"{SNAP}-edited"
    assert "memory: 128MiB" in edited["blueprint"] or "128" in edited["blueprint"]
    edited["blueprint"] = re.sub(r"memory: 128(\s*MiB)?", "memory: 160MiB", edited["blueprint"], count=1)
    path = r.home / "data" / "store" / "manifests" / f"{SNAP}-edited.json"
    path.write_text(json.dumps(edited))
    try:
        p = r("publish", "--from", f"{SNAP}-edited", "--name", BROKEN, check=False)
    finally:
        path.unlink()
    assert p.returncode == 8, p.stderr
    assert "is not the machine its memory state was saved from: '-m 128M' was saved, '-m 160M'" in p.stderr, p.stderr
    assert not any(ns.startswith(f"rv-{BROKEN}-") for ns in namespaces())


@pytest.fixture(scope="module")
def restored(saved):
    """The snapshot published as a new app, and what its guests show right after (taken here
    once, so that the tests below may run in any order)."""
    r, _, _, _ = saved
    t0 = time.monotonic()
    p = r("publish", "--from", SNAP, "--name", RESTORED, "--wait", "--timeout", "240")
    published = time.monotonic() - t0
    with r.console(RESTORED, "a") as con:
        con.check("true", timeout=60)
    answered = time.monotonic() - t0
    seen = {}
    for vm in ("a", "b"):
        log = r.status(RESTORED)[vm]["log"]
        seen[vm] = {
            "ram": sh(r, RESTORED, vm, "cat /ram-marker; echo $RAMVAR; kill -0 $(cat /sleeper) && echo SLEEPER-ALIVE"),
            "uptime": uptime(r, RESTORED, vm),
            "log": open(log, "rb").read(),
            "ready_lines": ready_count(log, vm),
        }
    ping = sh(r, RESTORED, "a", "ping -c 2 -W 3 10.43.0.12 || true")
    print(f"\npublish --from (memory) returned in {published:.1f} s; guest a answered after {answered:.1f} s")
    return p, seen, ping


def test_every_vm_resumes_where_it_was(saved, restored):
    r, marks, before, _ = saved
    p, seen, ping = restored
    assert "all VMs ready" in p.stdout
    for vm in ("a", "b"):
        got = seen[vm]
        assert got["ram"].split() == [marks[vm], marks[vm], "SLEEPER-ALIVE"], got["ram"]
        assert got["uptime"] > before[vm], (got["uptime"], before[vm])  # the clock went on
        assert b"RAVEL-RESUMED" in got["log"]
        assert got["ready_lines"] == 0 and b"Linux version" not in got["log"]  # never booted here
    # the network came along: the guests' ARP caches and the new overlay agree
    assert " 0% packet loss" in ping, ping


def test_republish_changes_nothing(saved, restored):
    r, _, _, _ = saved
    pids = qemu_pids(RESTORED)
    p = r("publish", "--from", SNAP, "--name", RESTORED)
    assert "nothing to do" in p.stdout, p.stdout
    assert qemu_pids(RESTORED) == pids


def test_stop_and_start_boot_from_the_disks(saved, restored):
    r, marks, _, _ = saved
    log = r.status(RESTORED)["b"]["log"]
    r("stop", RESTORED, "b")
    r("start", RESTORED, "b")
    wait_until(lambda: ready_count(log, "b") > 0, 120, "b to boot from its disks")
    assert sh(r, RESTORED, "b", "cat /ram-marker 2>/dev/null || echo NO-MARKER") == "NO-MARKER"
    assert uptime(r, RESTORED, "b") < 60


def test_an_interrupted_publish_over_ssh_still_resumes_when_run_again(saved):
    """Over SSH the hosts do not share this filesystem: the state file is sent to them."""
    r, marks, before, _ = saved
    # out of time before any host answers: the app and its hosts exist, no VM has started
    p = r("publish", "--from", SNAP, "--name", BROKEN, "--transport", "ssh", "--timeout", "0.001", check=False)
    assert p.returncode == 5, p.stdout + p.stderr
    assert BROKEN in r("list").stdout and not qemu_pids(BROKEN)
    try:
        r("publish", "--from", SNAP, "--name", BROKEN, "--timeout", "240")
        assert sh(r, BROKEN, "a", "echo $RAMVAR") == marks["a"]
        assert uptime(r, BROKEN, "a") > before["a"]
        shipped = list(Path("/run/ravel").glob(f"*/{BROKEN}/images/*.qemu-state"))
        assert len(shipped) == 2, shipped
    finally:
        r("destroy", BROKEN, "--yes")
