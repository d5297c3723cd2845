"""What must stay the same for a VM to resume from a saved memory state (`ravel snapshot
--memory`): the virtual machine QEMU builds, not where its files live.

A migration stream carries RAM and every device's state, section by section; the receiving QEMU
accepts it only if it builds the same machine: machine type, accelerator and CPU model, vCPUs,
RAM size, firmware, and the same devices in the same order (PCI slots follow the command line),
with the same ids and MACs. File paths, tap names, the VM's process name, its console and QMP
sockets and the kernel command line may differ. PURE.
"""

from __future__ import annotations

from typing import Mapping, Sequence

from ..model.blueprint import Blueprint
from ..plan.app import sketch_vnis
from ..plan.network import plan_network
from ..render.qemu import VmFiles, qemu_argv, tap_name

_KEEP = ("-machine", "-cpu", "-smp", "-m", "-bios", "-device", "-serial")
_PRESENCE = ("-kernel", "-initrd")  # the boot loader ROM QEMU adds; the files do not matter now
_LOCAL_KEYS = ("file", "ifname", "script", "downscript")


def machine_signature(argv: Sequence[str]) -> tuple[str, ...]:
    """The parts of a QEMU argv a migration stream depends on, as comparable strings."""
    out: list[str] = []
    for flag, value in zip(argv, argv[1:]):
        if flag in _KEEP:
            out.append(f"{flag} {value}")
        elif flag == "-accel":
            out.append(f"-accel {value.split(',', 1)[0]}")
        elif flag in _PRESENCE:
            out.append(flag)
        elif flag in ("-drive", "-netdev"):
            kept = [p for p in value.split(",") if p.split("=", 1)[0] not in _LOCAL_KEYS]
            out.append(f"{flag} {','.join(kept)}")
    return tuple(out)


def signature_difference(saved: Sequence[str], now: Sequence[str]) -> str | None:
    """None when a VM built from `now` can load a state saved from `saved`; else what differs,
    in a few words for an error message."""
    saved, now = list(saved), list(now)
    if saved == now:
        return None
    for a, b in zip(saved, now):
        if a != b:
            return f"{a!r} was saved, {b!r} would run now"
    if len(saved) > len(now):
        return f"{saved[len(now)]!r} was saved and is missing now"
    return f"{now[len(saved)]!r} is new since the state was saved"


def blueprint_signatures(bp: Blueprint, app: str, accel: Mapping[str, str]) -> dict[str, tuple[str, ...]]:
    """Each VM's machine signature as `bp` would run it, before any host exists: files and taps
    are placeholders (the signature leaves them out); `accel[vm]` is the accelerator to assume
    (the host's own is known, and compared, only once it has been probed)."""
    net = plan_network(bp, app, sketch_vnis(bp))
    out = {}
    for i, vm in enumerate(bp.vms):
        nics = net.of_vm(vm.name)
        files = VmFiles("/run", tuple(f"/data/{vm.name}-disk{j}.qcow2" for j in range(len(vm.disks))))
        argv = qemu_argv(app, vm, nics, [tap_name(i, n.index) for n in nics], files,
                         "kvm" if accel.get(vm.name) == "kvm" else "tcg")
        out[vm.name] = machine_signature(argv)
    return out


def accel_of(signature: Sequence[str]) -> str:
    return next((s.split(" ", 1)[1] for s in signature if s.startswith("-accel ")), "tcg")
