"""Snapshots of hosts reached over SSH, and `publish --from` onto such hosts: the local
provider's SSH mode (`--transport ssh`, one sshd per host namespace), the path cloud hosts take.

The hosts here happen to share this machine's filesystem, but ravel must not rely on it: the
first snapshot runs in this process with the SSH transport's `get` watched, so the test sees
that every new frozen layer (and only those) came through the host's SFTP session; a restored
disk's whole backing chain is sent to the hosts and rebased there, so the host's disk resolves
inside the host's own image directory.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import re
import signal
import subprocess
from pathlib import Path

import pytest
from conftest import GUEST, force_cleanup
from test_snapshot import MARK_MIB, SEQ_SECTOR, mark_md5, seq_on_disk, sh, snapshot
from test_ssh_lab import SshRavel, hosts_in_state, root_link_of, root_links, ssh_leftovers, sshd_pids

from ravel.paths import paths
from ravel.events import Event
from ravel.run.lab import Lab
from ravel.transport.ssh import SSHTransport

PID = os.getpid()
APP = f"sshsnap{PID}"
RESTORED = f"sshsnapr{PID}"
APPS = (APP, RESTORED)

BLUEPRINT = f"""\
name: sshsnap
networks:
  back: {{subnet: 10.43.0.0/24}}
defaults:
  memory: 160MiB
  boot: {{kernel: {GUEST}/vmlinuz, initrd: {GUEST}/initrd.img, cmdline: console=ttyS0 quiet}}
vms:
  a:
    disks: [{{size: 64MiB}}]
    nics: [{{network: back, ip: 10.43.0.11}}]
  b:
    disks: [{{size: 32MiB}}]
    nics: [{{network: back, ip: 10.43.0.12}}]
placement:
  host_types: [local-small]
  anti_affinity: [[a, b]]
"""


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    home = tmp_path_factory.mktemp("home")
    bp = home / "sshsnap.yaml"
    bp.write_text(BLUEPRINT)
    r = SshRavel(home)
    r.consoles = {}
    try:
        r("publish", str(bp), "--name", APP, "--transport", "ssh", "--wait", "--timeout", "240")
        yield r
    finally:
        for app in APPS:
            r("destroy", app, "--yes", check=False)
        left = [x for app in APPS for x in ssh_leftovers(app, home)]
        left += [f"link {name}" for name in root_links() if name == root_link_of(home)]
        left += [f"fetch dir {d}" for d in (home / "cache").glob("snapshot-fetch-*")]
        for app in APPS:
            for pid in sshd_pids(app):
                os.kill(pid, signal.SIGKILL)
            force_cleanup(app, home)
        assert not left, f"left behind: {left}"


def frozen_layers(r: SshRavel) -> dict[str, Path]:
    """sha256 -> frozen layer file, on every host of the source app."""
    out = {}
    for f in (r.home / "data" / "apps" / APP).glob("host-*/layers/*.qcow2"):
        if not f.name.endswith(".top.qcow2"):
            out[hashlib.sha256(f.read_bytes()).hexdigest()] = f
    return out


@pytest.fixture(scope="module")
def first(lab):
    """Snapshot s1 of the app on SSH hosts, taken while guest `a` keeps writing."""
    r = lab
    sh(r, APP, "a", f"dd if=/dev/urandom of=/dev/vda bs=1M count={MARK_MIB} conv=fsync 2>&1")
    md5 = mark_md5(r, APP)
    sh(r, APP, "a", f"(i=0; while [ $i -lt 1000000 ]; do echo \"seq $i\" | dd of=/dev/vda bs=512 "
                    f"seek={SEQ_SECTOR} count=1 conv=sync,fsync 2>/dev/null; i=$((i+1)); done) "
                    f"</dev/null >/dev/null 2>&1 & echo $! > /tmp/writer")
    before = seq_on_disk(r, APP)
    got: list[tuple[str, str, int]] = []
    real_reading = SSHTransport.reading

    @contextlib.contextmanager
    def watched_reading(self, remote):  # the real transfer, its bytes counted as they pass
        passed = [0]

        def counted(blocks):
            for block in blocks:
                passed[0] += len(block)
                yield block

        with real_reading(self, remote) as blocks:
            yield dataclasses.replace(blocks, blocks=counted(blocks.blocks))
        got.append((self.host, remote, passed[0]))

    events: list[Event] = []
    lab = Lab(paths({"RAVEL_HOME": str(r.home)}), emit=events.append)
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(SSHTransport, "reading", watched_reading)
            result = lab.snapshot(APP, "s1")
    finally:
        lab.close()
    after = seq_on_disk(r, APP)
    assert after > before, "the guest must still be writing"
    sh(r, APP, "a", "kill $(cat /tmp/writer); sleep 0.3")
    return {"result": result, "got": got, "events": events, "md5": md5, "seq": (before, after)}


def test_layers_come_over_ssh_and_only_new_ones(lab, first):
    r, res = lab, first["result"]
    assert res.vms == 2 and res.pause_s < 1.0, res
    assert res.bytes_uploaded >= MARK_MIB << 20
    m = json.loads(r("snapshots", "show", "s1", "--json").stdout)
    shas = {x["sha256"]: x["size"] for v in m["vms"] for d in v["disks"] for x in d["layers"]}
    frozen = frozen_layers(r)
    # every layer came through its host's SFTP session, once, whole: none was read here in place
    assert sorted((remote, size) for _, remote, size in first["got"]) == \
        sorted((str(frozen[sha]), size) for sha, size in shas.items())
    assert {host for host, _, _ in first["got"]} == {v["host"] for v in m["vms"]}  # both hosts
    assert res.layers_fetched == len(shas) and res.bytes_fetched == res.bytes_uploaded == sum(shas.values())
    assert any(e.stage == "fetch" and e.done and "from 2 hosts" in e.message for e in first["events"])
    for sha, size in shas.items():
        assert (r.home / "data" / "store" / "layers" / sha).stat().st_size == size
    assert not list((r.home / "cache").glob("snapshot-fetch-*"))  # the fetched copies are gone


@pytest.fixture(scope="module")
def second(lab, first):
    """s2 takes what the writer wrote after s1 (its chain: s1's layer, then its own); s3 finds
    the app unchanged."""
    r = lab
    final = seq_on_disk(r, APP)  # the writer is gone: this is what s2 must hold
    s2 = snapshot(r, APP, "--name", "s2")
    s3 = snapshot(r, APP, "--name", "s3")
    return {"s2": s2, "s3": s3, "seq": final}


def test_second_snapshot_of_an_unchanged_app_transfers_almost_nothing(lab, first, second):
    s2, s3 = second["s2"], second["s3"]
    assert 0 < s2["bytes_fetched"] == s2["bytes_uploaded"] < first["result"].bytes_uploaded, s2
    assert s2["layers_fetched"] == 1  # a's new layer; b's disk was not written: nothing new
    assert s3["bytes_fetched"] == 0 and s3["bytes_uploaded"] == 0, s3  # nothing left a host
    assert s3["bytes_stored"] <= 0.01 * first["result"].bytes_stored, s3


def host_disk_chain(r: SshRavel, app: str, vm: str) -> tuple[str, list[str]]:
    """The VM's disk on its host and every file of its backing chain, as QEMU resolves it."""
    for h in hosts_in_state(r, app).values():
        for v in h["desired"]["vms"]:
            if v["name"] == vm:
                disk = v["disks"][0]
                info = subprocess.run(["qemu-img", "info", "-U", "--backing-chain", "--output=json", disk["path"]],
                                      capture_output=True, text=True, check=True).stdout
                return disk["base"], [i["filename"] for i in json.loads(info)]
    raise AssertionError(f"no VM {vm} in the state")


def test_publish_from_snapshot_onto_ssh_hosts(lab, first, second):
    r = lab
    r("destroy", APP, "--yes")  # leave the CPUs to the restored guests
    p = r("publish", "--from", "s2", "--name", RESTORED, "--transport", "ssh", "--wait", "--timeout", "240")
    assert "all VMs ready" in p.stdout
    assert re.search(r"sending \S+ \(layer 2 of 2\)", p.stderr), p.stderr  # a's chain: base + frozen layer
    base, chain = host_disk_chain(r, RESTORED, "a")
    images = Path(base).parent
    assert images.name == "images" and f"/{RESTORED}/" in str(images)
    # the host's disk resolves on the host alone: nothing points at this machine's restored copies
    assert chain[1:] and all(Path(f).parent == images for f in chain[1:]), chain
    restored_here = r.home / "data" / "images"
    assert not any(str(restored_here) in f for f in chain)
    text = (r.home / "data" / "snapshots" / "s2.yaml").read_text()
    here = re.search(r"image: ([^,\s}]+)", text).group(1)  # VM a's disk, as restored on this machine
    assert Path(here).parent == restored_here
    cmp = subprocess.run(["qemu-img", "compare", "-U", here, base], capture_output=True, text=True)
    assert cmp.returncode == 0, cmp.stdout + cmp.stderr  # the host's chain holds the same bytes
    assert mark_md5(r, RESTORED) == first["md5"]
    assert seq_on_disk(r, RESTORED) == second["seq"]
    again = r("publish", "--from", "s2", "--name", RESTORED, "--transport", "ssh")
    assert "sending" not in again.stderr  # every file is on the hosts already, by content
