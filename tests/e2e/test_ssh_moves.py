"""Over SSH (the local provider's `--transport ssh`), where ravel may not touch a host's files
from here: `ravel logs` gives a console's bytes exactly, following included, and a VM whose
new plan puts it on another host takes its disk along, carried through this machine over the
two hosts' SSH connections (not renamed on the shared filesystem), sha256 verified.

One small lab (two VMs on two hosts, each disk an overlay over a base image) for the module.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from conftest import ROOT, Ravel, force_cleanup, wait_until
from test_ssh_lab import ssh_leftovers, sshd_pids

from tests.jsonschemas import parsed

APP = f"mv{os.getpid()}"

BLUEPRINT = """\
name: moves
networks:
  back: {subnet: 10.30.0.0/24}
defaults:
  memory: 128MiB
  disks: [{image: BASE}]
  boot: {kernel: GUEST/vmlinuz, initrd: GUEST/initrd.img, cmdline: console=ttyS0 quiet}
vms:
  one:
    nics: [{network: back, ip: 10.30.0.1}]
  two:
    nics: [{network: back, ip: 10.30.0.2}]
placement:
  host_types: [local-small]
  anti_affinity: [[one, two]]
"""
# what a guest may print that is not UTF-8: 0xff, 0xfe, a lone continuation byte, a truncated
# and an overlong sequence; and as printf in the guest writes it (octal escapes)
RAW = b"\xff\xfe\x80 \xc3( \xe2\x82 \xc0\xaf"
RAW_PRINTF = r"\377\376\200 \303( \342\202 \300\257"


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    home = tmp_path_factory.mktemp("home")
    work = tmp_path_factory.mktemp("bp")
    base = work / "base.qcow2"  # its first sector is 512 x "A": the guest reads it through its overlay
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(base), "16M"], check=True)
    subprocess.run(["qemu-io", "-c", "write -P 0x41 0 512", str(base)], check=True, capture_output=True)
    spread = work / "spread.yaml"
    spread.write_text(BLUEPRINT.replace("GUEST", str(ROOT / ".cache" / "guest")).replace("BASE", str(base)))
    packed = work / "packed.yaml"
    packed.write_text(spread.read_text().replace("  anti_affinity: [[one, two]]\n", ""))
    r = Ravel(home)
    try:
        r("publish", str(spread), "--name", APP, "--transport", "ssh", "--wait", "--timeout", "180")
        yield r, packed
    finally:
        r("destroy", APP, "--yes", check=False)
        left = ssh_leftovers(APP, home)
        for pid in sshd_pids(APP):
            os.kill(pid, signal.SIGKILL)
        force_cleanup(APP, home)
        assert not left, f"left behind: {left}"


def sh(r: Ravel, vm: str, cmd: str) -> str:
    with r.console(APP, vm) as con:
        return con.check(cmd, timeout=45)


def dry_run(r: Ravel, blueprint: Path) -> tuple[int, dict]:
    p = r("publish", str(blueprint), "--name", APP, "--dry-run", "--json", check=False)
    assert p.returncode in (0, 10), f"{p.returncode}\n{p.stdout}\n{p.stderr}"
    return p.returncode, parsed(p.stdout, "dry-run")


def logs(r: Ravel, *args: str) -> bytes:
    p = subprocess.run([sys.executable, "-m", "ravel", "logs", APP, *args], capture_output=True,
                       timeout=60, env=r.env(), cwd=ROOT, stdin=subprocess.DEVNULL)
    assert p.returncode == 0 and b"Traceback" not in p.stderr, p.stderr
    return p.stdout


def test_logs_are_byte_exact_over_ssh(lab):
    r, _ = lab
    log = Path(r.status(APP)["one"]["log"])  # on this machine too, so the test can compare
    sh(r, "one", f"printf 'BEGIN-1{RAW_PRINTF}-END-1\\n'")
    printed = b"BEGIN-1" + RAW + b"-END-1"
    assert printed in log.read_bytes()  # the guest's bytes reached its console log as they were
    before = log.read_bytes()
    out = logs(r, "one")
    assert printed in out
    assert len(out) >= len(before) and log.read_bytes().startswith(out)  # every byte, none changed


def test_logs_follow_over_ssh_gives_each_byte_once(lab):
    r, _ = lab
    log = Path(r.status(APP)["one"]["log"])
    start = len(log.read_bytes())
    proc = subprocess.Popen([sys.executable, "-m", "ravel", "logs", "-f", APP, "one"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=r.env(), cwd=ROOT, stdin=subprocess.DEVNULL)
    got = bytearray()

    def pump() -> None:
        while chunk := proc.stdout.read1(65536):
            got.extend(chunk)

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    try:
        wait_until(lambda: len(got) >= start, 30, "`ravel logs -f` to print the log so far")
        sh(r, "one", f"printf 'BEGIN-2{RAW_PRINTF}-END-2\\n'")  # while it follows
        printed = b"BEGIN-2" + RAW + b"-END-2"
        wait_until(lambda: printed in got, 30, "`ravel logs -f` to print what the guest printed since")
    finally:
        proc.send_signal(signal.SIGINT)  # ours, by its pid
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        reader.join(10)
    assert b"Traceback" not in proc.stderr.read()
    out = bytes(got)
    assert out.count(printed) == 1 and log.read_bytes().startswith(out), "bytes lost, changed or repeated"


def test_a_vm_moves_host_with_its_disk_carried_over_ssh(lab):
    r, packed = lab
    before = r.status(APP)
    assert before["one"]["host"] != before["two"]["host"]
    # a dry run first, over SSH too (the hosts' copies of the base image and boot files named as
    # publish names them): the running app matches its blueprint; the packed one moves a VM
    assert dry_run(r, packed.parent / "spread.yaml")[0] == 0
    rc, doc = dry_run(r, packed)
    (planned,) = [c for c in doc["changes"] if c["action"] == "move"]
    assert rc == 10 and planned["from"] != planned["host"] and len(planned["disks"]) == 1
    disks = {}
    for vm in ("one", "two"):
        sh(r, vm, f"echo disk-of-{vm} | dd of=/dev/vda bs=512 seek=2048 count=1 conv=sync 2>/dev/null; sync")
        disk = r.home / "data" / "apps" / APP / before[vm]["host"] / f"{vm}-disk0.qcow2"
        disks[vm] = (disk, disk.stat().st_ino)
    p = r("publish", str(packed), "--name", APP, "--wait", "--timeout", "120")
    after = r.status(APP)
    assert after["one"]["host"] == after["two"]["host"], after
    (vm,) = [v for v in after if after[v]["host"] != before[v]["host"]]
    src, dst = before[vm]["host"], after[vm]["host"]
    line = next((l for l in p.stderr.splitlines() if f"{vm} moves {src} -> {dst}" in l), "")
    assert re.search(r"1 file, [\d.]+ MiB sent over the hosts' transports, sha256 verified", line), p.stderr
    assert "removed (no longer in the plan)" in p.stderr
    assert f"{vm}: sending {vm}-disk0.qcow2" in p.stderr  # the overlay; its base is there already
    # carried as bytes, not renamed on the shared filesystem: a new file (a rename keeps the inode)
    moved = r.home / "data" / "apps" / APP / dst / f"{vm}-disk0.qcow2"
    assert moved.stat().st_ino != disks[vm][1] and not disks[vm][0].exists()
    assert not list(moved.parent.glob(".*.moving")) and not list((r.home / "cache").rglob(".move-*"))
    # the guest boots on the disk it had: its own marker over the base image's first sector
    assert sh(r, vm, "dd if=/dev/vda bs=512 skip=2048 count=1 2>/dev/null | head -c 12") == f"disk-of-{vm}"
    assert sh(r, vm, "dd if=/dev/vda bs=8 count=1 2>/dev/null") == "AAAAAAAA"
    assert (planned["name"], planned["from"], planned["host"]) == (vm, src, dst)  # as the dry run said
    assert dry_run(r, packed)[0] == 0
    other = "two" if vm == "one" else "one"
    assert sh(r, other, "dd if=/dev/vda bs=512 skip=2048 count=1 2>/dev/null | head -c 12") == f"disk-of-{other}"
    # and its console log is read from its new host, exactly
    out = logs(r, vm)
    assert f"RAVEL-READY {vm}".encode() in out and Path(after[vm]["log"]).read_bytes().startswith(out)
