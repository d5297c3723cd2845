"""Backing chains sent to hosts that do not share this machine's filesystem.

A disk restored from a snapshot (or any qcow2 base image with a backing file) is a chain of
files on this machine whose headers name each other by local paths. A host gets every file of
the chain once, by content, in its images directory, and each copy's header names its parent
by the parent's host file name, relative (QEMU resolves a relative backing name against the
directory of the image that holds it), so the chain resolves on the host alone.

Each file's host name is keyed by its own content and by the key of everything below it: the
same layer over a different parent is a different file on the host (its header differs), and a
parent changed in place never leaves a child on the host pointing at the old one.
"""

from __future__ import annotations

import hashlib
import os
import posixpath
import struct
from dataclasses import dataclass
from typing import Sequence

from ..errors import StoreError

QCOW2_MAGIC = b"QFI\xfb"
VMDK_MAGIC = b"KDMV"
_EXT_END = 0
_EXT_BACKING_FORMAT = 0xE2792ACA
MAX_CHAIN = 256  # a chain deeper than any snapshot history; more is a loop or a broken file
HEADER_READ = 1 << 16


@dataclass(frozen=True)
class Shipment:
    """One file of a chain: where it goes on the host and what its copy's header must name."""

    local: str
    remote: str
    format: str
    backing: str | None = None  # the parent's host name, relative to the images directory
    backing_format: str | None = None


def qcow2_backing(header: bytes) -> tuple[str, str | None] | None:
    """Pure: the (backing file name, backing format or None) a qcow2 header names; None when
    the image has no backing file or is not qcow2. `header` holds at least the header, its
    extensions and the backing name (the first cluster does)."""
    if len(header) < 72 or header[:4] != QCOW2_MAGIC:
        return None
    version, offset, size = struct.unpack(">IQI", header[4:20])
    if offset == 0 or size == 0:
        return None
    if offset + size > len(header):
        raise ValueError(f"backing file name at {offset}+{size} lies beyond the {len(header)} bytes read")
    name = header[offset:offset + size].decode("utf-8", errors="strict")
    fmt = None
    pos = struct.unpack(">I", header[100:104])[0] if version >= 3 and len(header) >= 104 else 72
    while pos + 8 <= min(len(header), offset):
        kind, length = struct.unpack(">II", header[pos:pos + 8])
        if kind == _EXT_END:
            break
        if kind == _EXT_BACKING_FORMAT:
            fmt = header[pos + 8:pos + 8 + length].decode("ascii", errors="replace")
        pos += 8 + (length + 7) // 8 * 8
    return name, fmt


def sniff_format(head: bytes) -> str:
    """Pure: an image's format from its first bytes, as QEMU probes it (blueprint names: a VHD
    is "vhd", QEMU's "vpc"); "raw" when nothing else matches."""
    if head[:4] == QCOW2_MAGIC:
        return "qcow2"
    if head[:4] == VMDK_MAGIC or head.startswith(b"# Disk DescriptorFile"):
        return "vmdk"
    if head.startswith(b"vhdxfile"):
        return "vhdx"
    if head.startswith(b"conectix"):  # a dynamic VHD's copy of its footer
        return "vhd"
    return "raw"


def chain_key(below: str | None, sha: str) -> str:
    """Pure: the content key of a file over the chain keyed `below` (None: a bottom file)."""
    if below is None:
        return sha
    return hashlib.sha256(f"{below}\0{sha}".encode()).hexdigest()


def host_name(images_dir: str, path: str, key: str) -> str:
    return posixpath.join(images_dir, f"{key[:16]}-{os.path.basename(path)}")


def chain_plan(chain: Sequence[tuple[str, str, str]], images_dir: str) -> list[Shipment]:
    """Pure: a chain of (local path, format, sha256), base first -> each file's place on the
    host and the backing name its copy must carry. A chain of one file is named as before
    chains were shipped: by its own sha256."""
    out: list[Shipment] = []
    key: str | None = None
    for path, fmt, sha in chain:
        key = chain_key(key, sha)
        below = out[-1] if out else None
        out.append(Shipment(path, host_name(images_dir, path, key), fmt,
                            posixpath.basename(below.remote) if below else None,
                            below.format if below else None))
    return out


def rebase_argv(s: Shipment, file: str) -> list[str]:
    """Pure: the host command that makes `file` (a copy of `s`) name its parent's host copy.
    Unsafe mode: only the header changes, the data is the layer's own."""
    assert s.backing is not None and s.backing_format is not None
    return ["qemu-img", "rebase", "-u", "-f", "qcow2", "-b", s.backing, "-F", s.backing_format, file]


def local_chain(path: str, fmt: str) -> list[tuple[str, str]]:
    """The image at `path` and every file below it on this machine, base first: [(path, format)].
    Reads qcow2 headers only; a non-qcow2 image ends the chain."""
    chain: list[tuple[str, str]] = []
    seen: set[str] = set()
    while True:
        real = os.path.realpath(path)
        if real in seen or len(chain) >= MAX_CHAIN:
            raise StoreError(f"{chain[0][0]}: its backing chain loops or is deeper than {MAX_CHAIN} files")
        seen.add(real)
        chain.append((path, fmt))
        if fmt != "qcow2":
            break
        try:
            with open(path, "rb") as fh:
                head = fh.read(HEADER_READ)
                if head[:4] == QCOW2_MAGIC and len(head) >= 20:
                    need = sum(struct.unpack(">QI", head[8:20]))
                    if need > len(head):
                        head += fh.read(need - len(head))
            backing = qcow2_backing(head)
        except OSError as exc:
            raise StoreError(f"cannot read {path}: {exc.strerror}") from None
        except (ValueError, struct.error) as exc:
            raise StoreError(f"{path}: not a readable qcow2 header: {exc}") from None
        if backing is None:
            break
        name, bfmt = backing
        if name.startswith("json:"):
            raise StoreError(f"{path}: its backing file is a json: specification, which ravel cannot send to a host")
        parent = name if os.path.isabs(name) else os.path.join(os.path.dirname(path), name)
        if not os.path.isfile(parent):
            raise StoreError(f"{path}: its backing file {parent} cannot be read: no such file")
        if bfmt is None:
            try:
                with open(parent, "rb") as fh:
                    bfmt = sniff_format(fh.read(64))
            except OSError as exc:
                raise StoreError(f"{path}: its backing file {parent} cannot be read: {exc.strerror}") from None
        path, fmt = parent, bfmt
    chain.reverse()
    return chain
