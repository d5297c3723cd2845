"""VMDK descriptors (pure): the text descriptor, or the one embedded in a sparse file."""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass

from .vm import bad

SPARSE_MAGIC = b"KDMV"
COWD_MAGIC = b"COWD"
SECTOR = 512
# VMware disk kinds QEMU opens; the others name physical devices on the ESXi host
SUPPORTED = {"monolithicsparse", "monolithicflat", "twogbmaxextentsparse", "twogbmaxextentflat",
             "streamoptimized", "vmfs", "vmfssparse", "vmfsthin", "sesparse"}
DEVICE_BACKED = {"vmfsraw", "vmfsrawdevicemap", "vmfspassthroughrawdevicemap", "fulldevice",
                 "partitioneddevice", "custom"}
# sector counts and offsets bounded (20 digits) before Python converts them
_EXTENT = re.compile(r'^(RW|RDONLY|NOACCESS)\s+(\d{1,20})\s+(\w+)(?:\s+"([^"]*)")?(?:\s+(\d{1,20}))?\s*$')


@dataclass(frozen=True)
class Extent:
    access: str
    sectors: int
    kind: str  # SPARSE, FLAT, ZERO, VMFS...
    file: str | None


@dataclass(frozen=True)
class Descriptor:
    create_type: str
    extents: tuple[Extent, ...]
    adapter_type: str | None
    parent: str | None  # parentFileNameHint of a delta disk


def embedded_descriptor(head: bytes, source: str) -> str | None:
    """The descriptor text inside a hosted sparse VMDK header, or None when `head` is not one.
    `head` is the start of the file (at least the first 64 KiB)."""
    if head[:4] == COWD_MAGIC:
        raise bad(source, "an ESX 'COWD' delta disk; import the disk it is a delta of, or consolidate it first")
    if head[:4] != SPARSE_MAGIC:
        return None
    if len(head) < 512:
        raise bad(source, "truncated VMDK header")
    offset, size = struct.unpack_from("<QQ", head, 28)
    start, end = offset * SECTOR, (offset + size) * SECTOR
    if not offset or not size:
        return ""  # a stream-optimized disk may keep it elsewhere; treat as self-contained
    if end > len(head):
        raise bad(source, f"VMDK descriptor at sector {offset} lies beyond the bytes read; the file is truncated")
    return head[start:end].split(b"\0", 1)[0].decode("utf-8", errors="replace")


def parse_descriptor(text: str, source: str) -> Descriptor:
    fields: dict[str, str] = {}
    extents: list[Extent] = []
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        m = _EXTENT.match(line)
        if m:
            extents.append(Extent(m.group(1), int(m.group(2)), m.group(3).upper(), m.group(4)))
            continue
        if "=" in line:
            key, value = line.split("=", 1)
            fields[key.strip().lower()] = value.strip().strip('"')
            continue
        raise bad(source, f"not a VMDK descriptor line: {line[:60]!r}", line=lineno)
    create = fields.get("createtype")
    if create is None:
        raise bad(source, "VMDK descriptor has no createType", key="createType")
    kind = create.lower()
    if kind in DEVICE_BACKED:
        raise bad(source, f"unsupported VMDK createType {create!r}: the disk is a physical device or raw "
                          "LUN on the ESXi host, not a file; copy it to a file-backed disk first", key="createType")
    if kind not in SUPPORTED:
        raise bad(source, f"unsupported VMDK createType {create!r}", key="createType")
    if not extents and kind != "streamoptimized":
        raise bad(source, "VMDK descriptor lists no extents", key="extents")
    return Descriptor(create, tuple(extents), fields.get("ddb.adaptertype"), fields.get("parentfilenamehint"))


def looks_like_descriptor(head: bytes) -> bool:
    text = head[:4096].decode("ascii", errors="replace")
    return "createType" in text and ("Disk DescriptorFile" in text or "RW " in text)
