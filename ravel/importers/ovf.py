"""OVF descriptors (DMTF DSP0243, versions 1.x and 2.x) and their .mf manifests (pure).

Read per VirtualSystem: CPUs (ResourceType 3), memory (4), IDE (5), SCSI (6) and SATA (20)
controllers, NICs (10) and disks (17, through HostResource ovf:/disk/<id> -> DiskSection ->
References), firmware and nested virtualization (VMware's vmw:Config keys). Elements are matched
by local name, so both OVF 1 (rasd) and 2 (epasd/sasd) namespaces work.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass

from ..model.units import MAX_MIB
from .vm import NIC_MODELS, SCSI_BUSES, ImportedNic, ImportedVM, bad, safe_name

CPU, MEMORY, IDE, SCSI, NIC, CDROM, DISK, SATA = 3, 4, 5, 6, 10, 15, 17, 20
MAX_CPUS = 1024  # as a blueprint's `cpus`
MAX_BYTES = 2**70  # any memory quantity in any unit: far above MAX_MIB, so its own message says why
_UNITS = {"byte": 1, "kilobytes": 2**10, "megabytes": 2**20, "gigabytes": 2**30}


@dataclass(frozen=True)
class DiskRef:
    vm: str
    bus: str
    href: str  # file name inside the package
    format: str  # vmdk | qcow2 | raw


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _attr(el: ET.Element, name: str) -> str | None:
    for k, v in el.attrib.items():
        if _local(k) == name:
            return v
    return None


def _children(el: ET.Element, name: str) -> list[ET.Element]:
    return [c for c in el if _local(c.tag) == name]


def _find_all(el: ET.Element, name: str) -> list[ET.Element]:
    return [c for c in el.iter() if _local(c.tag) == name]


def _text(el: ET.Element, name: str) -> str | None:
    for c in el:
        if _local(c.tag) == name and c.text is not None:
            return c.text.strip()
    return None


def allocation_bytes(units: str | None) -> int:
    """'byte * 2^20' -> 1048576; 'MegaBytes' -> 1048576 (DSP0004 programmatic units)."""
    if not units:
        return 2**20  # memory without units is MiB in practice
    u = units.replace(" ", "").lower()
    # bounded before it is computed: `byte * 10^999999999` would otherwise take hours
    m = re.fullmatch(r"byte(?:\*(\d{1,4})\^(\d{1,3}))?", u)
    if m:
        value = int(m.group(1)) ** int(m.group(2)) if m.group(1) else 1
        if not 1 <= value <= 2**60:
            raise ValueError(units)
        return value
    if u in _UNITS:
        return _UNITS[u]
    raise ValueError(units)


def parse_ovf(text: str | bytes, source: str) -> tuple[list[ImportedVM], list[DiskRef], list[str]]:
    try:
        root = ET.fromstring(text)
    except ET.ParseError as exc:
        line = exc.position[0] if hasattr(exc, "position") else 0
        raise bad(source, f"not valid XML: {exc}", line=line) from None
    if _local(root.tag) != "Envelope":
        raise bad(source, f"not an OVF descriptor: the root element is <{_local(root.tag)}>, not <Envelope>")
    notes: list[str] = []
    files: dict[str, tuple[str, str | None]] = {}
    for f in _find_all(root, "File"):
        fid, href = _attr(f, "id"), _attr(f, "href")
        if fid and href:
            if _attr(f, "compression"):
                raise bad(source, f"file {href!r} is {_attr(f, 'compression')}-compressed; unsupported, "
                                  "export the OVF without compression", key=f"References.File[{fid}]")
            if _attr(f, "chunkSize"):
                raise bad(source, f"file {href!r} is split in chunks; unsupported", key=f"References.File[{fid}]")
            files[fid] = (href, _attr(f, "size"))
    disks: dict[str, tuple[str, str]] = {}  # diskId -> (href, format)
    for d in _find_all(root, "Disk"):
        did, ref = _attr(d, "diskId"), _attr(d, "fileRef")
        if not did:
            continue
        if not ref:
            raise bad(source, f"disk {did!r} has no fileRef: a blank disk; ravel imports disks with content",
                      key=f"DiskSection.Disk[{did}]")
        if ref not in files:
            raise bad(source, f"disk {did!r} refers to file {ref!r}, which References does not list",
                      key=f"DiskSection.Disk[{did}].fileRef")
        fmt_uri = (_attr(d, "format") or "").lower()
        fmt = "vmdk" if "vmdk" in fmt_uri or files[ref][0].lower().endswith(".vmdk") else (
            "qcow2" if "qcow" in fmt_uri or files[ref][0].lower().endswith(".qcow2") else "raw")
        disks[did] = (files[ref][0], fmt)
    systems = _find_all(root, "VirtualSystem")
    if not systems:
        raise bad(source, "no VirtualSystem in the descriptor")
    vms: list[ImportedVM] = []
    refs: list[DiskRef] = []
    taken: set[str] = set()
    for i, vs in enumerate(systems):
        raw_name = _text(vs, "Name") or _attr(vs, "id")
        if not raw_name:
            notes.append(f"VirtualSystem {i + 1} has neither an ovf:id nor a Name; imported as vm{i + 1}")
        name = safe_name(raw_name or "", f"vm{i + 1}")
        while name in taken:
            name = f"{name[:28]}-{len(taken) + 1}"
        taken.add(name)
        vm = ImportedVM(name)
        where = f"VirtualSystem[{_attr(vs, 'id') or i}]"
        hw = next(iter(_find_all(vs, "VirtualHardwareSection")), None)
        if hw is None:
            raise bad(source, "has no VirtualHardwareSection", key=where)
        items = [c for c in hw if _local(c.tag) in ("Item", "EthernetPortItem", "StorageItem")]
        controllers: dict[str, str] = {}
        pending: list[tuple[str, ET.Element]] = []
        seen: set[int] = set()
        for item in items:
            try:
                rtype = int((_text(item, "ResourceType") or "0")[:12])
                if len(_text(item, "ResourceType") or "") > 12:
                    raise ValueError
            except ValueError:
                raise bad(source, f"ResourceType {_short(_text(item, 'ResourceType'))} is not a number",
                          key=f"{where}.Item[{_text(item, 'InstanceID')}]") from None
            seen.add(rtype)
            iid = _text(item, "InstanceID") or ""
            sub = (_text(item, "ResourceSubType") or "").strip()
            ikey = f"{where}.Item[{iid}]"
            if rtype == CPU:
                vm.cpus = _int(_text(item, "VirtualQuantity"), source, ikey + ".VirtualQuantity", MAX_CPUS)
            elif rtype == MEMORY:
                qty = _int(_text(item, "VirtualQuantity"), source, ikey + ".VirtualQuantity", MAX_BYTES)
                try:
                    unit = allocation_bytes(_text(item, "AllocationUnits"))
                except ValueError:
                    raise bad(source, f"unknown AllocationUnits {_short(_text(item, 'AllocationUnits'))}",
                              key=ikey + ".AllocationUnits") from None
                vm.memory_mib = max(1, qty * unit // 2**20)
                if vm.memory_mib > MAX_MIB:
                    raise bad(source, f"{qty} x {unit} bytes of memory is more than a VM can have",
                              key=ikey + ".VirtualQuantity")
            elif rtype == IDE:
                controllers[iid] = "ide"
            elif rtype == SATA:
                controllers[iid] = "sata"
            elif rtype == SCSI:
                key = sub.lower()
                if key not in SCSI_BUSES:
                    raise bad(source, f"unsupported SCSI controller {sub!r} (known: "
                                      f"{', '.join(sorted(SCSI_BUSES))})", key=ikey + ".ResourceSubType")
                bus, note = SCSI_BUSES[key]
                controllers[iid] = bus
                if note:
                    notes.append(f"{name}: {note}")
            elif rtype == NIC:
                key = sub.lower()
                if key not in NIC_MODELS:
                    raise bad(source, f"unsupported NIC model {sub!r} (known: {', '.join(sorted(NIC_MODELS))})",
                              key=ikey + ".ResourceSubType")
                model, note = NIC_MODELS[key]
                if note:
                    notes.append(f"{name}: {note}")
                vm.nics.append(ImportedNic(model, _text(item, "Connection") or "VM Network"))
            elif rtype == DISK:
                pending.append((ikey, item))
            elif rtype == CDROM:
                m = re.fullmatch(r"(?:ovf:)?/file/(.+)", _text(item, "HostResource") or "")
                if m and m.group(1) in files:  # an ISO shipped in the package: kept as a CD drive
                    refs.append(DiskRef(name, "cdrom", files[m.group(1)][0], "iso"))
                else:
                    notes.append(f"{name}: CD/DVD drive {iid} has no image in the package; not imported")
        # a descriptor without them is hand-made or damaged: say what the VM gets instead
        if CPU not in seen:
            notes.append(f"{name}: the descriptor has no CPU item (ResourceType 3); imported with {vm.cpus} vCPU")
        if MEMORY not in seen:
            notes.append(f"{name}: the descriptor has no memory item (ResourceType 4); imported with "
                         f"{vm.memory_mib} MiB")
        for ikey, item in pending:
            parent = _text(item, "Parent") or ""
            if parent not in controllers:
                raise bad(source, f"disk's Parent {parent!r} is not a disk controller of this VM", key=ikey + ".Parent")
            res = _text(item, "HostResource") or ""
            m = re.fullmatch(r"(?:ovf:)?/disk/(.+)", res)
            if not m or m.group(1) not in disks:
                raise bad(source, f"HostResource {res!r} names no disk in the DiskSection", key=ikey + ".HostResource")
            href, fmt = disks[m.group(1)]
            refs.append(DiskRef(name, controllers[parent], href, fmt))
        for cfg in _find_all(vs, "Config") + _find_all(vs, "ExtraConfig"):
            key, value = (_attr(cfg, "key") or "").lower(), (_attr(cfg, "value") or "").lower()
            if key == "firmware" and value == "efi":
                vm.firmware = "uefi"
            elif key in ("nestedhvenabled", "vhv.enable") and value == "true":
                vm.nested = True
        vms.append(vm)
    return vms, refs, notes


def _short(text: str | None) -> str:
    return repr(text) if text is None or len(text) <= 40 else repr(text[:37] + "...")


def _int(text: str | None, source: str, key: str, limit: int) -> int:
    """A positive whole number up to `limit`, range-checked before Python converts it."""
    digits = (text or "").strip()
    if not digits.isdigit() and not (digits[:1] in "+-" and digits[1:].isdigit()):
        raise bad(source, f"expected a whole number, got {_short(text)}", key=key)
    if len(digits.lstrip("+-0")) > len(str(limit)):
        raise bad(source, f"{_short(text)} is out of range (at most {limit})", key=key)
    value = int(digits)
    if value < 1:
        raise bad(source, f"must be positive, got {value}", key=key)
    if value > limit:
        raise bad(source, f"{value} is out of range (at most {limit})", key=key)
    return value


def parse_mf(text: str, source: str) -> dict[str, tuple[str, str]]:
    """An OVF manifest: file name -> (algorithm, hex digest). Lines: SHA256(name)= digest."""
    out: dict[str, tuple[str, str]] = {}
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        m = re.fullmatch(r"\s*(SHA1|SHA256|SHA512)\s*\((.+)\)\s*=\s*([0-9a-fA-F]+)\s*", line)
        if not m:
            raise bad(source, f"not a manifest line (expected SHA256(file)= digest): {line.strip()[:60]!r}",
                      line=lineno)
        out[m.group(2)] = (m.group(1).lower(), m.group(3).lower())
    return out
