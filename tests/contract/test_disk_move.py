"""Moving a stopped VM's disk between hosts that do not share this machine's files, over the
hosts' own transports: two SSH hosts (real sshd in real namespaces, made by the local provider as
`ravel publish --transport ssh` makes them) and real qcow2 chains made with qemu-img on the hosts.
And the shared-filesystem case (namespace transports): a rename."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import subprocess
import time

import pytest

from ravel.errors import StateError, TransportError
from ravel.paths import paths
from ravel.providers.base import HostSpec
from ravel.providers.local import LocalProvider, namespaces
from ravel.run.diskmove import move_disk
from ravel.transport.netns import NamespaceTransport

APP = f"dm{os.getpid()}"


@pytest.fixture(scope="module")
def hosts(tmp_path_factory):
    if os.geteuid() != 0:
        pytest.fail("disk move tests need root (network namespaces); run `make test` as root")
    provider = LocalProvider(paths({"RAVEL_HOME": str(tmp_path_factory.mktemp("home"))}))
    made = []
    try:
        for i in (1, 2):
            h = provider.ensure_host(HostSpec(APP, f"host-{i}", i, "local-small", transport="ssh"))
            made.append((h, provider.transport(h)))
        yield made
    finally:
        for h, t in made:
            t.close()
        for i in (1, 2):
            provider.delete_host(APP, f"host-{i}", i)
        provider.cleanup()
        left = [ns for ns in namespaces() if ns.startswith(f"rv-{APP}-") or ns == provider.underlay]
        assert not left, f"left behind: {left}"


@pytest.fixture
def disk(hosts, tmp_path):
    """On host-1: base <- a frozen layer (as a snapshot leaves it) <- the disk, each with data."""
    (_, t1), _ = hosts
    images, h1 = tmp_path / "run" / "images", tmp_path / "data" / "host-1"
    base, layer, top = images / "base.qcow2", h1 / "layers" / "vm-disk0.s1.qcow2", h1 / "vm-disk0.qcow2"
    t1.run(["mkdir", "-p", str(images), str(layer.parent)])
    t1.run(["qemu-img", "create", "-q", "-f", "qcow2", str(base), "8M"])
    t1.run(["qemu-io", "-c", "write -P 0x11 0 64k", str(base)])
    t1.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(base), "-F", "qcow2", str(layer)])
    t1.run(["qemu-io", "-c", "write -P 0x22 1M 64k", str(layer)])
    t1.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(layer), "-F", "qcow2", str(top)])
    t1.run(["qemu-io", "-c", "write -P 0x33 2M 64k", str(top)])
    return {"base": base, "layer": layer, "top": top, "dst": tmp_path / "data" / "host-2" / "vm-disk0.qcow2"}


def sha(path) -> str:
    return subprocess.run(["sha256sum", str(path)], capture_output=True, text=True, check=True).stdout.split()[0]


def reads_back(t, path) -> bool:
    """Every layer's data, read through the whole chain on the host itself."""
    return t.run(["qemu-io", "-c", "read -P 0x11 0 64k", "-c", "read -P 0x22 1M 64k", "-c", "read -P 0x33 2M 64k",
                  str(path)], check=False).stdout.count("read 65536/65536") == 3


def test_a_disk_and_its_layers_move_over_ssh_verified(hosts, disk):
    (_, t1), (_, t2) = hosts
    inode = disk["top"].stat().st_ino
    base_sha = sha(disk["base"])
    notes = []
    moved = move_disk(t1, str(disk["top"]), t2, str(disk["dst"]), time.monotonic() + 60,
                      note=notes.append)
    # the disk and its frozen layer were sent (the base is there already); nothing was renamed
    assert (moved.files, moved.renamed) == (2, False) and moved.bytes > 0, moved
    assert notes == ["sending vm-disk0.s1.qcow2", "sending vm-disk0.qcow2"]
    assert "sha256 verified" in moved.describe()
    assert disk["dst"].stat().st_ino != inode
    assert not disk["top"].exists() and not disk["layer"].exists()
    assert sha(disk["base"]) == base_sha  # a base stays where other VMs may use it
    # the moved disk opens on its moved layer, then the base, and holds every byte it held
    chain = t2.run(["qemu-img", "info", "--backing-chain", "--output=json", str(disk["dst"])]).stdout
    assert str(disk["dst"].parent / "layers" / "vm-disk0.s1.qcow2") in chain and "host-1" not in chain
    assert reads_back(t2, disk["dst"])
    # no temporary file on either side, or here
    assert sorted(os.listdir(disk["dst"].parent)) == ["layers", "vm-disk0.qcow2"]
    assert os.listdir(disk["dst"].parent / "layers") == ["vm-disk0.s1.qcow2"]
    assert os.listdir(disk["layer"].parent) == []
    # again: nothing left to do
    again = move_disk(t1, str(disk["top"]), t2, str(disk["dst"]))
    assert (again.files, again.finished) == (0, False) and reads_back(t2, disk["dst"])


def test_a_move_interrupted_after_the_target_took_the_disk_only_removes_the_source(hosts, disk):
    (_, t1), (_, t2) = hosts
    move_disk(t1, str(disk["top"]), t2, str(disk["dst"]))
    kept = sha(disk["dst"])
    # the source's copy is back, as if the move had stopped right before removing it
    t1.run(["cp", "-a", str(disk["dst"]), str(disk["top"])])
    moved = move_disk(t1, str(disk["top"]), t2, str(disk["dst"]))
    assert moved.finished and moved.files == 0
    assert not disk["top"].exists() and sha(disk["dst"]) == kept


class _Garbling:
    """A real transport whose file reads arrive with one byte changed (a fault in transit)."""

    def __init__(self, t) -> None:
        self._t = t

    def __getattr__(self, name):
        return getattr(self._t, name)

    @contextlib.contextmanager
    def reading(self, remote):
        with self._t.reading(remote) as blocks:
            def garbled():
                for i, block in enumerate(blocks):
                    yield bytes([block[0] ^ 0xFF]) + block[1:] if i == 0 else block

            yield dataclasses.replace(blocks, blocks=garbled())


def test_bytes_changed_in_transit_move_nothing(hosts, disk):
    (_, t1), (_, t2) = hosts
    before = sha(disk["top"]), sha(disk["layer"])
    with pytest.raises(TransportError, match=r"^host-1: .*vm-disk0.s1.qcow2 arrived changed .* nothing was moved"):
        move_disk(_Garbling(t1), str(disk["top"]), t2, str(disk["dst"]))
    assert (sha(disk["top"]), sha(disk["layer"])) == before and reads_back(t1, disk["top"])
    assert not disk["dst"].parent.exists() or not [f for f in disk["dst"].parent.rglob("*") if f.is_file()]


def test_a_disk_still_in_use_is_not_moved(hosts, disk):
    (h1, t1), (_, t2) = hosts
    # qemu-io holds the image open (and locked) as a running QEMU would
    holder = subprocess.Popen(["ip", "netns", "exec", h1.ref, "qemu-io", "-c", "sleep 60000", str(disk["top"])],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 30
        while t1.run(["qemu-img", "info", str(disk["top"])], check=False).rc == 0:
            assert holder.poll() is None, f"qemu-io exited: {holder.stderr.read()}"
            assert time.monotonic() < deadline, "qemu-io never took the lock"
            time.sleep(0.1)
        with pytest.raises(StateError, match=r"^host-1: .*vm-disk0.qcow2 is still in use"):
            move_disk(t1, str(disk["top"]), t2, str(disk["dst"]))
    finally:
        holder.kill()
        holder.wait(10)
    assert disk["top"].exists() and not disk["dst"].exists()


def test_hosts_sharing_this_machines_files_rename(hosts, disk):
    (h1, _), (h2, _) = hosts
    n1, n2 = NamespaceTransport(h1.name, h1.ref), NamespaceTransport(h2.name, h2.ref)
    inode = disk["top"].stat().st_ino
    moved = move_disk(n1, str(disk["top"]), n2, str(disk["dst"]))
    assert moved.renamed and disk["dst"].stat().st_ino == inode and not disk["top"].exists()


def test_out_of_time_says_so(hosts, disk):
    (_, t1), (_, t2) = hosts
    with pytest.raises(TransportError, match="out of time while moving"):
        move_disk(t1, str(disk["top"]), t2, str(disk["dst"]), time.monotonic() - 1)
    assert disk["top"].exists()
