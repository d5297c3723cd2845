"""VMware .vmx configuration files (pure): `key = "value"` lines, keys case-insensitive."""

from __future__ import annotations

import re

from ..model.units import MAX_MIB
from .vm import NIC_MODELS, SCSI_BUSES, ImportedNic, ImportedVM, bad, safe_name

_LINE = re.compile(r'^\s*([A-Za-z0-9_.:]+)\s*=\s*"?(.*?)"?\s*$')


def parse_vmx(text: str, source: str) -> tuple[ImportedVM, list[tuple[str, str, str]], list[str]]:
    """-> (VM, [(bus, disk file as written, key)], notes)."""
    conf: dict[str, str] = {}
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#") or line.startswith(".encoding"):
            continue
        m = _LINE.match(line)
        if not m:
            raise bad(source, f"not a `key = \"value\"` line: {line[:60]!r}", line=lineno)
        conf[m.group(1).lower()] = m.group(2)
    if not any(k.startswith(("numvcpus", "memsize", "displayname", "virtualhw", "config.version",
                             "ethernet", "scsi", "sata", "ide", "nvme")) for k in conf):
        raise bad(source, "not a VMware .vmx file: none of its keys (numvcpus, memsize, displayName...)")
    notes: list[str] = []
    name = safe_name(conf.get("displayname", ""), "vm")
    vm = ImportedVM(name)
    for key, attr in (("numvcpus", "cpus"), ("memsize", "memory_mib")):
        if key in conf:
            text, limit = conf[key].strip(), (1024 if key == "numvcpus" else MAX_MIB)
            # range-checked before Python converts it: a 5,000-digit value is an error, not a hang
            if not text.isdigit() or len(text.lstrip("0")) > len(str(limit)) or not 1 <= int(text) <= limit:
                shown = repr(text) if len(text) <= 40 else repr(text[:37] + "...")
                raise bad(source, f"expected a whole number from 1 to {limit}, got {shown}", key=key)
            setattr(vm, attr, int(text))
    if conf.get("firmware", "").lower() == "efi":
        vm.firmware = "uefi"
    if conf.get("vhv.enable", "").lower() == "true":
        vm.nested = True
    for n in range(10):
        p = f"ethernet{n}"
        if conf.get(f"{p}.present", "false").lower() != "true":
            continue
        dev = conf.get(f"{p}.virtualdev", "").lower()
        if not dev:
            dev = "e1000"
            notes.append(f"{name}: {p} names no virtualDev; imported as e1000 (VMware's usual default)")
        if dev not in NIC_MODELS:
            raise bad(source, f"unsupported NIC model {dev!r} (known: {', '.join(sorted(NIC_MODELS))})",
                      key=f"{p}.virtualDev")
        model, note = NIC_MODELS[dev]
        if note:
            notes.append(f"{name}: {note}")
        vm.nics.append(ImportedNic(model, conf.get(f"{p}.networkname") or "VM Network"))
    disks: list[tuple[str, str, str]] = []
    for kind in ("scsi", "sata", "ide", "nvme"):
        for c in range(4):
            ctl = f"{kind}{c}"
            if kind in ("scsi", "sata", "nvme") and conf.get(f"{ctl}.present", "false").lower() != "true":
                continue
            bus = {"sata": "sata", "ide": "ide", "nvme": "virtio"}.get(kind, "")
            if kind == "scsi":
                dev = conf.get(f"{ctl}.virtualdev", "lsilogic").lower()
                if dev not in SCSI_BUSES:
                    raise bad(source, f"unsupported SCSI controller {dev!r}", key=f"{ctl}.virtualDev")
                bus, note = SCSI_BUSES[dev]
                if note:
                    notes.append(f"{name}: {note}")
            for unit in range(64 if kind != "ide" else 2):
                slot = f"{ctl}:{unit}"
                if f"{slot}.filename" not in conf or conf.get(f"{slot}.present", "true").lower() != "true":
                    continue
                dtype = conf.get(f"{slot}.devicetype", "disk").lower()
                if dtype == "cdrom-image":  # an ISO file: kept as a CD drive of the VM
                    vm.cdroms.append(conf[f"{slot}.filename"])
                    continue
                if "cdrom" in dtype or "atapi" in dtype:
                    notes.append(f"{name}: CD/DVD {slot} is this host's drive ({dtype}); not imported")
                    continue
                if kind == "nvme":
                    notes.append(f"{name}: {slot} is NVMe; imported as a virtio disk")
                disks.append((bus, conf[f"{slot}.filename"], f"{slot}.fileName"))
    return vm, disks, notes
