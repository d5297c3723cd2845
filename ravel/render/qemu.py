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
# UEFI: the firmware's code read-only and shared, its variable store per VM (a qcow2 overlay over
# the empty store, kept with the VM's disks, so settings and boot entries survive stop/start,
# moves and snapshots); Debian's ovmf package, secure boot off
OVMF_CODE = "/usr/share/OVMF/OVMF_CODE_4M.fd"
OVMF_VARS = "/usr/share/OVMF/OVMF_VARS_4M.fd"
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
    vars: str | None = None  # UEFI: the VM's variable store (an overlay, like a disk)
    seed: str | None = None  # cloud-init: the NoCloud seed ISO, on this machine

    def path(self, vm: str, what: str) -> str:
        return f"{self.run_dir}/{vm}.{what}"


def tap_name(vm_ordinal: int, nic_index: int) -> str:
    return f"rt{vm_ordinal}n{nic_index}"


def netdev_id(nic_index: int) -> str:
    """The NIC's -netdev id: what QMP's set_link names (`ravel link`)."""
    return f"net{nic_index}"


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


# The CPU model a guest sees under TCG, chosen by measurement (bench/tcg_cpu_bench.py, the real
# Debian 12 guest, figures in docs/capacity.md): sha256sum of 200 MiB took 2.93 s under EPYC-Rome,
# 2.99 under qemu64, 3.01 under Nehalem, 4.20 under max (0.67 natively), a shell loop the same
# under all (6.1-6.5 s); of the fastest, EPYC-Rome also runs x86-64-v3 guests (AVX2: RHEL 10),
# which qemu64 (v1) and Nehalem (v2) cannot. `max` offers SVM, so nested VMs keep it.
TCG_CPU_MODEL = "EPYC-Rome"


def cpu_model_for(vm: VM, accel: str) -> str:
    """The blueprint's `cpu_model:` if it names one; else the host's CPU under KVM, `max` for a
    guest hypervisor under TCG (it needs SVM), and TCG_CPU_MODEL for the rest."""
    if vm.cpu_model:
        return vm.cpu_model
    if accel == "kvm":
        return "host"
    return "max" if vm.nested else TCG_CPU_MODEL


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
    machine = machine_type(vm)
    argv = [QEMU, "-name", f"{vm.name},process=ravel-{app}-{vm.name}", "-nodefaults", "-no-user-config",
            "-display", "none", "-machine", machine]
    if accel == "kvm":
        argv += ["-accel", "kvm", "-cpu", cpu_model_for(vm, accel)]
    else:
        argv += ["-accel", f"tcg,thread=multi,tb-size={TB_SIZE_MIB}", "-cpu", cpu_model_for(vm, accel)]
    argv += ["-smp", str(vm.cpus), "-m", f"{vm.memory_mib}M"]
    if vm.firmware == "uefi":
        argv += ["-drive", f"if=pflash,format=raw,unit=0,readonly=on,file={OVMF_CODE}"]
        if files.vars:  # the drive id of a disk: snapshots and moves treat it as one
            argv += ["-drive", f"if=pflash,format=qcow2,unit=1,id={vars_drive(vm)},file={files.vars}"]
    if vm.kernel_boot:
        assert vm.boot is not None and vm.boot.kernel is not None
        argv += ["-kernel", vm.boot.kernel]
        if vm.boot.initrd:
            argv += ["-initrd", vm.boot.initrd]
        argv += ["-append", guest_cmdline(vm, nics, gateways)]
    order = boot_order(vm, files)
    argv += _disks(vm, files, order)
    argv += _cdroms(vm, files, order)
    for nic, tap in zip(nics, taps):
        nid = netdev_id(nic.index)
        device = f"{NIC_DEVICE[nic.model]},netdev={nid},mac={nic.mac}"
        if nic.index == 0 and "network" in order:
            device += f",bootindex={order['network']}"
        argv += ["-netdev", f"tap,id={nid},ifname={tap},script=no,downscript=no", "-device", device]
    serial = files.path(vm.name, "serial")
    argv += [
        "-chardev", f"socket,id=ser0,path={serial},server=on,wait=off,logfile={files.path(vm.name, 'log')},logappend=on",
        "-serial", "chardev:ser0",
        "-qmp", f"unix:{files.path(vm.name, 'qmp')},server=on,wait=off",
        *(_agent(files.path(vm.name, "qga")) if vm.agent else ()),
        "-vnc", f"unix:{files.path(vm.name, 'vnc')}",
        "-pidfile", files.path(vm.name, "pid"),
    ]
    if daemonize:
        argv.append("-daemonize")
    return argv


def _agent(socket: str) -> list[str]:
    # the guest agent's channel: a virtio-serial port of the name qemu-guest-agent looks for
    # (its udev rule starts the agent when the port appears), served on a unix socket here
    return ["-device", "virtio-serial-pci,id=vser0",
            "-chardev", f"socket,id=qga0,path={socket},server=on,wait=off",
            "-device", "virtserialport,bus=vser0.0,chardev=qga0,name=org.qemu.guest_agent.0"]


def vars_drive(vm: VM) -> str:
    """The UEFI variable store's drive id: the disk after the VM's last one."""
    return f"disk{len(vm.disks)}"


def boot_order(vm: VM, files: VmFiles) -> dict[str, int]:
    """Device class -> bootindex, for VMs the firmware boots. Set only where the choice matters
    (an explicit order, or a CD the firmware could otherwise pick), so the argv of every other
    VM stays as it always was (saved memory states compare it)."""
    if vm.kernel_boot or vm.boot is None and not (vm.cdroms or files.seed):
        return {}
    order = vm.boot.order if vm.boot is not None else ("disk",)
    return {dev: i + 1 for i, dev in enumerate(order)}


def _cdroms(vm: VM, files: VmFiles, order: dict[str, int]) -> list[str]:
    """The VM's ISO images, then its cloud-init seed, as read-only CD drives: SATA on q35 (its
    built-in AHCI controller), IDE on the pc machine (after the IDE disks)."""
    argv: list[str] = []
    images = list(vm.cdroms) + ([files.seed] if files.seed else [])
    ide_used = sum(d.bus == "ide" for d in vm.disks)
    for i, path in enumerate(images):
        drive = f"cd{i}"
        argv += ["-drive", f"file={path},if=none,id={drive},media=cdrom,readonly=on,format=raw"]
        slot = ide_used + i
        bus = f"ide.{slot // 2},unit={slot % 2}" if machine_type(vm) == "pc" else f"ide.{i}"
        boot = f",bootindex={order['cdrom']}" if i == 0 and "cdrom" in order and vm.cdroms else ""
        argv += ["-device", f"ide-cd,drive={drive},bus={bus}{boot}"]
    return argv


def machine_type(vm: VM) -> str:
    return "pc" if any(d.bus == "ide" for d in vm.disks) else "q35"


def _disks(vm: VM, files: VmFiles, order: dict[str, int]) -> list[str]:
    argv: list[str] = []
    controllers: dict[str, str] = {}
    sata_port = ide_slot = 0
    for i, (disk, path) in enumerate(zip(vm.disks, files.disks)):
        drive = f"disk{i}"
        boot = f",bootindex={order['disk']}" if i == 0 and "disk" in order else ""
        argv += ["-drive", f"file={path},if=none,id={drive},format=qcow2,cache=writeback,discard=unmap"]
        if disk.bus == "virtio":
            argv += ["-device", f"virtio-blk-pci,drive={drive}{boot}"]
        elif disk.bus in SCSI_CONTROLLER:
            ctl = controllers.get(disk.bus)
            if ctl is None:
                ctl = controllers[disk.bus] = f"scsi{sum(c.startswith('scsi') for c in controllers.values())}"
                argv += ["-device", f"{SCSI_CONTROLLER[disk.bus]},id={ctl}"]
            argv += ["-device", f"scsi-hd,drive={drive},bus={ctl}.0{boot}"]
        elif disk.bus == "sata":
            if "sata" not in controllers:
                controllers["sata"] = "ahci0"
                argv += ["-device", "ahci,id=ahci0"]
            argv += ["-device", f"ide-hd,drive={drive},bus=ahci0.{sata_port}{boot}"]
            sata_port += 1
        else:  # ide, on the pc machine's PIIX controller: two buses, master and slave on each
            argv += ["-device", f"ide-hd,drive={drive},bus=ide.{ide_slot // 2},unit={ide_slot % 2}{boot}"]
            ide_slot += 1
    return argv
