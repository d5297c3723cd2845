"""What an import produces: VM entries with the blueprint's own device names, and the notes
(devices QEMU only approximates) a user should read. Pure."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Any

from ..errors import BlueprintError, Problem
from ..model.dump import to_yaml

# VMware device names -> (blueprint name, note when QEMU only has a relative)
NIC_MODELS: dict[str, tuple[str, str]] = {
    "vmxnet3": ("vmxnet3", ""),
    "e1000": ("e1000", ""),
    "e1000e": ("e1000e", ""),
    "pcnet32": ("pcnet", ""),
    "vlance": ("pcnet", ""),
    "flexible": ("pcnet", "a 'Flexible' NIC starts as PCnet32; it runs as pcnet"),
    "vmxnet": ("vmxnet3", "QEMU has no VMXNET (1); it runs as vmxnet3, the nearest"),
    "vmxnet2": ("vmxnet3", "QEMU has no VMXNET 2; it runs as vmxnet3, the nearest"),
    "virtio": ("virtio", ""),
    "virtio-net": ("virtio", ""),
}
SCSI_BUSES: dict[str, tuple[str, str]] = {
    "virtualscsi": ("pvscsi", ""),
    "pvscsi": ("pvscsi", ""),
    "lsilogic": ("lsilogic", "QEMU has no LSI Logic parallel controller; it runs as LSI SAS 1068 "
                             "(mptsas1068, same guest driver family)"),
    "lsilogicsas": ("lsisas", ""),
    "lsisas1068": ("lsisas", ""),
    "buslogic": ("lsilogic", "QEMU has no BusLogic controller; it runs as LSI SAS 1068 (mptsas1068); "
                             "the guest needs an LSI driver"),
    "virtio-scsi": ("virtio", "virtio-scsi runs as a virtio disk"),
}

_SAFE = re.compile(r"[^a-z0-9-]+")


def safe_name(text: str, fallback: str, limit: int = 32) -> str:
    """A VM or network name the blueprint accepts: lowercase letters, digits and dashes."""
    name = _SAFE.sub("-", text.lower()).strip("-")[:limit].strip("-")
    return name or fallback


@dataclass
class ImportedDisk:
    bus: str
    image: str  # path of the disk image on this machine
    format: str  # vmdk | qcow2 | raw


@dataclass
class ImportedNic:
    model: str
    network: str  # the name in the source (a port group, "VM Network"...)


@dataclass
class ImportedVM:
    name: str
    cpus: int = 1
    memory_mib: int = 512
    firmware: str = "bios"
    nested: bool = False
    disks: list[ImportedDisk] = field(default_factory=list)
    nics: list[ImportedNic] = field(default_factory=list)
    cdroms: list[str] = field(default_factory=list)  # ISO images on this machine


@dataclass
class ImportResult:
    source: str
    vms: list[ImportedVM]
    notes: list[str] = field(default_factory=list)

    def network_names(self) -> dict[str, str]:
        """Source network name -> blueprint network name, in first-seen order."""
        out: dict[str, str] = {}
        for vm in self.vms:
            for nic in vm.nics:
                if nic.network not in out:
                    base = safe_name(nic.network, "net")
                    name, n = base, 2
                    while name in out.values():
                        name, n = f"{base[:29]}-{n}", n + 1
                    out[nic.network] = name
        return out

    def json(self) -> dict[str, Any]:
        nets = self.network_names()
        return {"vms": {vm.name: {
            "cpus": vm.cpus, "memory_mib": vm.memory_mib, "firmware": vm.firmware, "nested": vm.nested,
            "nics": [{"model": n.model, "network": nets[n.network]} for n in vm.nics],
            "disks": [{"bus": d.bus, "image": d.image} for d in vm.disks],
            **({"cdroms": list(vm.cdroms)} if vm.cdroms else {}),
        } for vm in self.vms}}

    def blueprint(self, base_dir: str | None = None) -> dict[str, Any]:
        """The blueprint; with `base_dir` (where it is written) file paths are relative to it."""
        nets = self.network_names()

        def where(p: str) -> str:
            return os.path.relpath(p, base_dir) if base_dir else p

        networks = {name: {"subnet": f"10.{200 + i}.0.0/24"} for i, name in enumerate(nets.values())}
        vms: dict[str, Any] = {}
        for vm in self.vms:
            entry: dict[str, Any] = {"cpus": vm.cpus, "memory": vm.memory_mib}
            if vm.firmware != "bios":
                entry["firmware"] = vm.firmware
            if vm.nested:
                entry["nested"] = True
            if vm.disks:
                entry["disks"] = [{"image": where(d.image), "format": d.format, "bus": d.bus} for d in vm.disks]
            if vm.nics:
                entry["nics"] = [{"network": nets[n.network], "model": n.model} for n in vm.nics]
            if vm.cdroms:
                entry["cdroms"] = [where(c) for c in vm.cdroms]
            vms[vm.name] = entry
        doc: dict[str, Any] = {"name": safe_name(self.vms[0].name if len(self.vms) == 1 else "imported",
                                                 "imported", 40)}
        if networks:
            doc["networks"] = networks
        doc["vms"] = vms
        return doc

    def yaml(self, base_dir: str | None = None) -> str:
        header = f"imported by `ravel import` from {self.source}"
        if self.network_names():
            header += "\nnetwork subnets are placeholders: set the ones your VMs use"
        for note in self.notes:
            header += f"\nnote: {note}"
        return to_yaml(self.blueprint(base_dir), header=header)


class ImportProblem(BlueprintError):
    """A descriptor, archive or disk that cannot be imported; located like a blueprint problem."""

    def __init__(self, problem: Problem) -> None:
        super().__init__([problem])
        self.message = str(problem)
        self.args = (self.message,)


def bad(file: str, message: str, key: str = "", line: int = 0) -> ImportProblem:
    return ImportProblem(Problem(file, line, 0, key, message))
