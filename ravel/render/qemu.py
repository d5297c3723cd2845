"""QEMU command lines from a VM and its planned NICs: pure text, compared as text in tests.

QEMU is the nested hypervisor. Under KVM the host CPU is passed through (with VT-x/AMD-V when
the VM is `nested`); under TCG, `-cpu max` gives the guest every feature QEMU can emulate,
AMD SVM included, so guest hypervisors work even where the host has no hardware virtualization.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Mapping, Sequence

from ..model.blueprint import VM
from ..plan.network import NicPlan

QEMU = "qemu-system-x86_64"
OVMF = "/usr/share/ovmf/OVMF.fd"
TB_SIZE_MIB = 64  # caps the TCG translation cache; the planner counts it in QEMU_OVERHEAD_MIB

NIC_DEVICE = {"virtio": "virtio-net-pci", "e1000": "e1000", "e1000e": "e1000e", "vmxnet3": "vmxnet3",
              "pcnet": "pcnet"}
# VMware's "LSI Logic" is the Fusion-MPT family; QEMU has no LSI Logic parallel (53C1030)
# controller, and mptsas1068 is the nearest relative (same mpt driver family in guests).
SCSI_CONTROLLER = {"pvscsi": "pvscsi", "lsilogic": "mptsas1068", "lsisas": "mptsas1068"}


@dataclass(frozen=True)
class VmFiles:
    """Where a VM's runtime files live on its host (sockets need short paths: < 108 bytes)."""

    run_dir: str
    disks: tuple[str, ...]  # one overlay path per blueprint disk, in order

    def path(self, vm: str, what: str) -> str:
        return f"{self.run_dir}/{vm}.{what}"


def tap_name(vm_ordinal: int, nic_index: int) -> str:
    return f"rt{vm_ordinal}n{nic_index}"


def guest_cmdline(vm: VM, nics: Sequence[NicPlan], gateways: Mapping[str, str] | None = None) -> str:
    """The blueprint's cmdline plus ravel's hints for the demo guest (guest/README.md): its
    name, and each fixed address by NIC position (ethN is the Nth NIC, in PCI order, which is
    the blueprint's order because QEMU assigns slots in command-line order). NICs on `dhcp: true`
    networks get no hint: the guest asks DHCP, like an unmodified VM would. `gateways` (network
    -> gateway) gives the first statically addressed NIC's gateway as the default route."""
    parts = [vm.boot.cmdline] if vm.boot and vm.boot.cmdline else []
    parts.append(f"ravel.name={vm.name}")
    static = [n for n in nics if n.ip is not None and not n.dhcp]
    addrs = [f"eth{n.index}:{n.ip.with_prefixlen}" for n in static]
    if addrs:
        parts.append("ravel.ip=" + ",".join(addrs))
    gw = next((gateways[n.network] for n in static if gateways and n.network in gateways), None)
    if gw:
        parts.append(f"ravel.gw={gw}")
    return " ".join(parts)


def qemu_argv(
    app: str,
    vm: VM,
    nics: Sequence[NicPlan],
    taps: Sequence[str],
    files: VmFiles,
    accel: Literal["kvm", "tcg"],
    daemonize: bool = True,
    gateways: Mapping[str, str] | None = None,
) -> list[str]:
    ide = any(d.bus == "ide" for d in vm.disks)
    machine = "pc" if ide else "q35"
    argv = [QEMU, "-name", f"{vm.name},process=ravel-{app}-{vm.name}", "-nodefaults", "-no-user-config",
            "-display", "none", "-machine", machine]
    if accel == "kvm":
        argv += ["-accel", "kvm", "-cpu", "host"]
    else:
        argv += ["-accel", f"tcg,thread=multi,tb-size={TB_SIZE_MIB}", "-cpu", "max"]
    argv += ["-smp", str(vm.cpus), "-m", f"{vm.memory_mib}M"]
    if vm.firmware == "uefi":
        argv += ["-bios", OVMF]
    if vm.boot is not None:
        argv += ["-kernel", vm.boot.kernel]
        if vm.boot.initrd:
            argv += ["-initrd", vm.boot.initrd]
        argv += ["-append", guest_cmdline(vm, nics, gateways)]
    argv += _disks(vm, files)
    for nic, tap in zip(nics, taps):
        nid = f"net{nic.index}"
        argv += ["-netdev", f"tap,id={nid},ifname={tap},script=no,downscript=no",
                 "-device", f"{NIC_DEVICE[nic.model]},netdev={nid},mac={nic.mac}"]
    serial = files.path(vm.name, "serial")
    argv += [
        "-chardev", f"socket,id=ser0,path={serial},server=on,wait=off,logfile={files.path(vm.name, 'log')},logappend=on",
        "-serial", "chardev:ser0",
        "-qmp", f"unix:{files.path(vm.name, 'qmp')},server=on,wait=off",
        "-vnc", f"unix:{files.path(vm.name, 'vnc')}",
        "-pidfile", files.path(vm.name, "pid"),
    ]
    if daemonize:
        argv.append("-daemonize")
    return argv


def _disks(vm: VM, files: VmFiles) -> list[str]:
    argv: list[str] = []
    controllers: dict[str, str] = {}
    sata_port = ide_slot = 0
    for i, (disk, path) in enumerate(zip(vm.disks, files.disks)):
        drive = f"disk{i}"
        argv += ["-drive", f"file={path},if=none,id={drive},format=qcow2,cache=writeback,discard=unmap"]
        if disk.bus == "virtio":
            argv += ["-device", f"virtio-blk-pci,drive={drive}"]
        elif disk.bus in SCSI_CONTROLLER:
            ctl = controllers.get(disk.bus)
            if ctl is None:
                ctl = controllers[disk.bus] = f"scsi{sum(c.startswith('scsi') for c in controllers.values())}"
                argv += ["-device", f"{SCSI_CONTROLLER[disk.bus]},id={ctl}"]
            argv += ["-device", f"scsi-hd,drive={drive},bus={ctl}.0"]
        elif disk.bus == "sata":
            if "sata" not in controllers:
                controllers["sata"] = "ahci0"
                argv += ["-device", "ahci,id=ahci0"]
            argv += ["-device", f"ide-hd,drive={drive},bus=ahci0.{sata_port}"]
            sata_port += 1
        else:  # ide, on the pc machine's PIIX controller: two buses, master and slave on each
            argv += ["-device", f"ide-hd,drive={drive},bus=ide.{ide_slot // 2},unit={ide_slot % 2}"]
            ide_slot += 1
    return argv
