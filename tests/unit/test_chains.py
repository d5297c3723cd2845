"""Backing chains sent to hosts that do not share this filesystem: which files, under which
names, with which backing names; and which snapshot layers must be fetched from hosts."""

from __future__ import annotations

import os
import struct
import subprocess
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ravel.errors import StoreError
from ravel.host.desired import VM, Desired, Disk
from ravel.run.chains import (chain_key, chain_plan, host_name, local_chain, qcow2_backing, rebase_argv,
                              sniff_format)
from ravel.snapshot.fetch import HostFile, brought_here, host_files
from ravel.run.ship import digest, ship
from ravel.snapshot.layers import sha256_file
from ravel.transport.base import CommandResult

SHA = [c * 64 for c in "abc"]


def header(backing: bytes = b"", fmt: bytes | None = None, version: int = 3) -> bytes:
    """A qcow2 header as QEMU writes one: fixed fields, extensions, then the backing name."""
    length = 104 if version >= 3 else 72
    ext = b""
    if fmt is not None:
        ext += struct.pack(">II", 0xE2792ACA, len(fmt)) + fmt + b"\0" * (-len(fmt) % 8)
    ext += struct.pack(">II", 0x6803F857, 0)  # an extension ravel does not read (feature table)
    ext += struct.pack(">II", 0, 0)
    offset = length + len(ext) if backing else 0
    fixed = struct.pack(">4sIQII", b"QFI\xfb", version, offset, len(backing), 16)
    fixed += b"\0" * (length - len(fixed))
    if version >= 3:
        fixed = fixed[:100] + struct.pack(">I", length)
    return (fixed + ext + backing).ljust(512, b"\0")


def test_qcow2_backing_reads_name_and_format():
    assert qcow2_backing(header(b"/img/base.qcow2", b"qcow2")) == ("/img/base.qcow2", "qcow2")
    assert qcow2_backing(header(b"rel.raw", b"raw", version=2)) == ("rel.raw", "raw")
    assert qcow2_backing(header(b"old-style.img")) == ("old-style.img", None)
    assert qcow2_backing(header()) is None  # no backing file: a base
    assert qcow2_backing(b"KDMV" + b"\0" * 600) is None  # not qcow2
    with pytest.raises(ValueError, match="beyond"):
        qcow2_backing(header(b"/img/base.qcow2", b"qcow2")[:120])


def test_sniff_format():
    assert sniff_format(b"QFI\xfb\0\0\0\3") == "qcow2"
    assert sniff_format(b"KDMV\1\0\0\0") == "vmdk"
    assert sniff_format(b"# Disk DescriptorFile\n") == "vmdk"
    assert sniff_format(b"\0" * 64) == "raw"


def test_chain_plan_names_each_file_by_content_and_everything_below():
    chain = [("/c/base.raw", "raw", SHA[0]), ("/c/l1.qcow2", "qcow2", SHA[1]), ("/c/top.qcow2", "qcow2", SHA[2])]
    plan = chain_plan(chain, "/h/images")
    assert [s.local for s in plan] == ["/c/base.raw", "/c/l1.qcow2", "/c/top.qcow2"]
    assert plan[0].remote == host_name("/h/images", "/c/base.raw", SHA[0]) == f"/h/images/{'a' * 16}-base.raw"
    assert plan[0].backing is None and plan[0].backing_format is None
    # each copy names its parent's host copy, relative: it resolves in the images directory
    assert plan[1].backing == os.path.basename(plan[0].remote) and plan[1].backing_format == "raw"
    assert plan[2].backing == os.path.basename(plan[1].remote) and plan[2].backing_format == "qcow2"
    assert rebase_argv(plan[2], "/h/images/.x.staging") == [
        "qemu-img", "rebase", "-u", "-f", "qcow2", "-b", plan[2].backing, "-F", "qcow2", "/h/images/.x.staging"]
    # the same top over a different base is another file on the host
    other = chain_plan([("/c/base.raw", "raw", "d" * 64), *chain[1:]], "/h/images")
    assert other[2].remote != plan[2].remote and other[1].remote != plan[1].remote
    assert chain_plan(chain[:1], "/h/images") == plan[:1]


@given(st.lists(st.sampled_from(SHA + ["d" * 64]), min_size=1, max_size=6))
def test_chain_keys_are_stable_and_order_sensitive(shas):
    key = None
    keys = []
    for sha in shas:
        key = chain_key(key, sha)
        keys.append(key)
    plan = chain_plan([(f"/c/f{i}", "qcow2", sha) for i, sha in enumerate(shas)], "/i")
    assert [s.remote for s in plan] == [host_name("/i", f"/c/f{i}", k) for i, k in enumerate(keys)]
    assert len(set(keys)) == len(keys)  # a key never repeats down a chain (no loops on the host)


def qimg(*args: str) -> None:
    subprocess.run(["qemu-img", *args], check=True, capture_output=True)


def qio(command: str, image: Path) -> None:
    subprocess.run(["qemu-io", "-f", "qcow2", "-c", command, str(image)], check=True, capture_output=True)


def make_chain(d: Path) -> Path:
    """raw base <- qcow2 (absolute backing) <- qcow2 (relative backing), each layer writing."""
    d.mkdir(parents=True, exist_ok=True)
    (d / "base.raw").write_bytes(b"B" * (1 << 20))
    qimg("create", "-q", "-f", "qcow2", "-b", str(d / "base.raw"), "-F", "raw", str(d / "l1.qcow2"))
    qio("write -P 0x11 4096 4096", d / "l1.qcow2")
    qimg("create", "-q", "-f", "qcow2", "-b", "l1.qcow2", "-F", "qcow2", str(d / "top.qcow2"))
    qio("write -P 0x22 8192 4096", d / "top.qcow2")
    return d / "top.qcow2"


def test_local_chain_follows_absolute_and_relative_backing_names(tmp_path):
    top = make_chain(tmp_path / "c")
    assert local_chain(str(top), "qcow2") == [
        (str(tmp_path / "c/base.raw"), "raw"), (str(tmp_path / "c/l1.qcow2"), "qcow2"), (str(top), "qcow2")]
    assert local_chain(str(tmp_path / "c/base.raw"), "raw") == [(str(tmp_path / "c/base.raw"), "raw")]
    (tmp_path / "c/base.raw").unlink()
    with pytest.raises(StoreError, match="backing file .*base.raw cannot be read"):
        local_chain(str(top), "qcow2")


def test_local_chain_refuses_a_loop(tmp_path):
    qimg("create", "-q", "-f", "qcow2", str(tmp_path / "a.qcow2"), "1M")
    qimg("create", "-q", "-f", "qcow2", "-u", "-b", "a.qcow2", "-F", "qcow2", str(tmp_path / "b.qcow2"), "1M")
    qimg("rebase", "-u", "-f", "qcow2", "-b", "b.qcow2", "-F", "qcow2", str(tmp_path / "a.qcow2"))
    with pytest.raises(StoreError, match="loops"):
        local_chain(str(tmp_path / "b.qcow2"), "qcow2")


class DirHost:
    """A transport whose host filesystem is a directory; commands run for real with host paths
    mapped into it (qemu-img rebase, mv, ls), and every file sent is recorded."""

    host = "h1"
    is_local = False

    def __init__(self, root: Path) -> None:
        self.root, self.sent, self.ran = root, [], []

    def here(self, path: str) -> str:
        return str(self.root / path.lstrip("/")) if path.startswith("/") else path

    def run(self, argv, input=None, timeout=120, check=True):
        self.ran.append(list(argv))
        p = subprocess.run([self.here(a) for a in argv], capture_output=True, text=True)
        assert not check or p.returncode == 0, p.stderr
        return CommandResult(p.returncode, p.stdout, p.stderr)

    def put(self, local, remote, mode=0o644):
        dest = Path(self.here(remote))
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(Path(local).read_bytes())
        self.sent.append(remote)

    def get(self, remote, local):
        Path(local).write_bytes(Path(self.here(remote)).read_bytes())
        self.got = getattr(self, "got", []) + [remote]


def test_ship_sends_a_whole_chain_once_and_it_resolves_on_the_host(tmp_path):
    top = make_chain(tmp_path / "c")
    def vm(name, base):
        return VM(name, True, ("qemu",), f"/r/{name}.pid", f"/r/{name}.qmp",
                  (Disk(f"/d/{name}0.qcow2", base=base, base_format="qcow2"),))

    doc = Desired("t", "/r", vms=(vm("a", str(top)), vm("b", str(top))))
    host = DirHost(tmp_path / "host")
    out = ship(host, doc, "/var/lib/ravel/images")
    assert len(host.sent) == 3  # base, l1, top: each once although two VMs use it
    remote_top = out.vms[0].disks[0].base
    assert out.vms[1].disks[0].base == remote_top and remote_top.startswith("/var/lib/ravel/images/")
    # only the two overlays were rebased, and never under their final name
    rebased = [a[-1] for a in host.ran if a[:2] == ["qemu-img", "rebase"]]
    assert len(rebased) == 2 and all(os.path.basename(r).startswith(".") for r in rebased)
    on_host = host.here(remote_top)
    info = subprocess.run(["qemu-img", "info", "--backing-chain", on_host], capture_output=True, text=True).stdout
    assert str(tmp_path / "c") not in info  # nothing on the host points back at this machine
    cmp = subprocess.run(["qemu-img", "compare", str(top), on_host], capture_output=True, text=True)
    assert cmp.returncode == 0, cmp.stdout + cmp.stderr  # the guest sees the same bytes
    assert not list(Path(host.here("/var/lib/ravel/images")).glob(".*"))  # no staging file left
    again = ship(host, doc, "/var/lib/ravel/images")
    assert again == out and len(host.sent) == 3
    # a new layer over the same chain: only it is sent
    qimg("create", "-q", "-f", "qcow2", "-b", str(top), "-F", "qcow2", str(tmp_path / "c/next.qcow2"))
    doc = Desired("t", "/r", vms=(vm("a", str(tmp_path / "c/next.qcow2")), vm("b", str(top))))
    ship(host, doc, "/var/lib/ravel/images")
    assert len(host.sent) == 4
    assert digest(str(top))  # unchanged by shipping


def report(host: str, files: dict[str, tuple[Path, int]]) -> dict:
    chain = [{"path": str(p), "sha256": sha, "size": size} for sha, (p, size) in files.items()]
    return {host: {"vms": {"a": {"disks": [{"index": 0, "chain": chain}]}}}}


def test_host_files_from_reports():
    base, l1 = {"path": "/y/base", "sha256": SHA[0], "size": 5}, {"path": "/y/l1", "sha256": SHA[1], "size": 6}
    reports = {
        "h2": {"vms": {"b": {"disks": [{"index": 0, "chain": [{**base, "path": "/x/base"}]}],
                             "memory": {"path": "/x/b.state", "sha256": SHA[2], "size": 7}}}},
        "h1": {"vms": {"a": {"disks": [{"index": 0, "chain": [base, l1]}]}}},
    }
    assert host_files(reports) == {SHA[0]: HostFile("h1", "/y/base", 5), SHA[1]: HostFile("h1", "/y/l1", 6),
                                   SHA[2]: HostFile("h2", "/x/b.state", 7)}


def test_only_the_layers_asked_for_are_fetched_verified_and_cleaned_up(tmp_path):
    layers = tmp_path / "host" / "layers"
    layers.mkdir(parents=True)
    files = {}
    for name in ("base", "l1", "l2"):
        p = layers / name
        p.write_bytes(name.encode() * 1000)
        files[sha256_file(p)[0]] = Path("/layers") / name
    known = sha256_file(layers / "base")[0]  # the store holds it, whole: not asked for
    host = DirHost(tmp_path / "host")
    cache = tmp_path / "cache"
    reports = report("h1", {sha: (p, (layers / p.name).stat().st_size) for sha, p in files.items()})
    needed = {sha: p for sha, p in files.items() if sha != known}
    with brought_here(needed, reports, {"h1": host}, cache) as b:
        assert set(b.fetched) == set(files) - {known} and sorted(host.got) == ["/layers/l1", "/layers/l2"]
        assert set(b.files) == set(files) - {known}
        for sha, p in b.files.items():
            assert p.is_relative_to(cache) and sha256_file(p)[0] == sha
        assert b.fetched_bytes == sum((layers / n).stat().st_size for n in ("l1", "l2"))
    assert list(cache.iterdir()) == []  # the temporary directory is gone
    # a file that changed on the way is refused, and still cleaned up
    (layers / "l2").write_bytes(b"changed")
    with pytest.raises(StoreError, match=r"h1: layer /layers/l2 arrived with sha256 .* but the host reported"):
        with brought_here(needed, reports, {"h1": host}, cache):
            pass
    assert list(cache.iterdir()) == []


def test_hosts_sharing_this_filesystem_are_read_in_place(tmp_path):
    p = tmp_path / "layer"
    p.write_bytes(b"x" * 100)
    sha = sha256_file(p)[0]

    class Local(DirHost):
        is_local = True

    host = Local(tmp_path)
    with brought_here({sha: p}, report("h1", {sha: (p, 100)}), {"h1": host}, tmp_path / "c") as b:
        assert b.files == {sha: p} and not b.fetched and not hasattr(host, "got")
