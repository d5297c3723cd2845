"""Rendering: QEMU argv and host desired state, compared as text."""

from __future__ import annotations

import textwrap
from ipaddress import IPv4Interface

from ravel.model.resolve import load_blueprint
from ravel.plan.catalogue import load_catalogue
from ravel.plan.network import assign_mac, plan_network
from ravel.plan.plan import make_plan
from ravel.plan.app import resolve_app
from ravel.render.host_state import HostSite, desired_docs
from ravel.render.qemu import VmFiles, guest_cmdline, qemu_argv

BP = textwrap.dedent("""\
    name: t
    networks:
      a: {subnet: 10.1.0.0/24}
      b: {subnet: 10.2.0.0/24}
    vms:
      x:
        cpus: 2
        memory: 256MiB
        nested: true
        boot: {kernel: /k, initrd: /i, cmdline: console=ttyS0}
        disks:
          - {image: /base.vmdk, bus: pvscsi}
          - {size: 1GiB, bus: sata}
          - {size: 1GiB, bus: lsilogic}
        nics:
          - {network: a, model: vmxnet3, ip: 10.1.0.5}
          - {network: b, mac: "52:54:00:aa:bb:cc"}
      y:
        disks: [{size: 1GiB, bus: ide}, {size: 1GiB, bus: ide}, {size: 1GiB, bus: ide}]
        firmware: uefi
        agent: false
        nics: [{network: a, model: e1000}]
    placement:
      anti_affinity: [[x, y]]
    """)


def setup():
    bp = load_blueprint(BP, "t.yaml")
    net = plan_network(bp, "t", {"a": 1000, "b": 1001})
    return bp, net


def test_qemu_argv_tcg_nested_devices():
    bp, net = setup()
    vm = bp.vm("x")
    files = VmFiles("/run/r/t/host-1", ("/d/x-disk0.qcow2", "/d/x-disk1.qcow2", "/d/x-disk2.qcow2"))
    argv = qemu_argv("t", vm, net.of_vm("x"), ["rt0n0", "rt0n1"], files, "tcg")
    mac0 = net.of_vm("x")[0].mac
    assert " ".join(argv) == (
        "qemu-system-x86_64 -name x,process=ravel-t-x -nodefaults -no-user-config -display none "
        "-machine q35 -accel tcg,thread=multi,tb-size=64 -cpu max -smp 2 -m 256M "
        "-kernel /k -initrd /i -append console=ttyS0 ravel.name=x "
        "ravel.ip=eth0:10.1.0.5/24 "
        "-drive file=/d/x-disk0.qcow2,if=none,id=disk0,format=qcow2,cache=writeback,discard=unmap "
        "-device pvscsi,id=scsi0 -device scsi-hd,drive=disk0,bus=scsi0.0 "
        "-drive file=/d/x-disk1.qcow2,if=none,id=disk1,format=qcow2,cache=writeback,discard=unmap "
        "-device ahci,id=ahci0 -device ide-hd,drive=disk1,bus=ahci0.0 "
        "-drive file=/d/x-disk2.qcow2,if=none,id=disk2,format=qcow2,cache=writeback,discard=unmap "
        "-device mptsas1068,id=scsi1 -device scsi-hd,drive=disk2,bus=scsi1.0 "
        "-netdev tap,id=net0,ifname=rt0n0,script=no,downscript=no "
        f"-device vmxnet3,netdev=net0,mac={mac0} "
        "-netdev tap,id=net1,ifname=rt0n1,script=no,downscript=no "
        "-device virtio-net-pci,netdev=net1,mac=52:54:00:aa:bb:cc "
        "-chardev socket,id=ser0,path=/run/r/t/host-1/x.serial,server=on,wait=off,"
        "logfile=/run/r/t/host-1/x.log,logappend=on -serial chardev:ser0 "
        "-qmp unix:/run/r/t/host-1/x.qmp,server=on,wait=off "
        "-device virtio-serial-pci,id=vser0 -chardev socket,id=qga0,path=/run/r/t/host-1/x.qga,server=on,wait=off "
        "-device virtserialport,bus=vser0.0,chardev=qga0,name=org.qemu.guest_agent.0 "
        "-vnc unix:/run/r/t/host-1/x.vnc -pidfile /run/r/t/host-1/x.pid -daemonize"
    )


def test_qemu_argv_kvm_ide_uefi():
    bp, net = setup()
    vm = bp.vm("y")
    files = VmFiles("/r", ("/d/0", "/d/1", "/d/2"), vars="/d/y-uefivars.qcow2")
    argv = " ".join(qemu_argv("t", vm, net.of_vm("y"), ["rt1n0"], files, "kvm"))
    # UEFI: the firmware read-only and shared, the variable store the VM's own (drive id: the
    # disk after its last, so snapshots and moves carry it like a disk)
    assert ("-machine pc -accel kvm -cpu host -smp 1 -m 512M "
            "-drive if=pflash,format=raw,unit=0,readonly=on,file=/usr/share/OVMF/OVMF_CODE_4M.fd "
            "-drive if=pflash,format=qcow2,unit=1,id=disk3,file=/d/y-uefivars.qcow2 ") in argv
    assert "bus=ide.0,unit=0" in argv and "bus=ide.0,unit=1" in argv and "bus=ide.1,unit=0" in argv
    assert "-device e1000,netdev=net0" in argv
    assert "-accel tcg" not in argv and "-kernel" not in argv
    assert "guest_agent" not in argv and "virtio-serial" not in argv  # agent: false


def test_guest_cmdline_only_fixed_addresses():
    bp, net = setup()
    line = guest_cmdline(bp.vm("x"), net.of_vm("x"))
    assert line == "console=ttyS0 ravel.name=x ravel.ip=eth0:10.1.0.5/24"  # eth1 has no fixed ip


def test_macs_deterministic_unique_and_respect_fixed():
    bp, net = setup()
    again = plan_network(bp, "t", {"a": 1000, "b": 1001})
    assert net == again
    macs = [n.mac for n in net.nics]
    assert len(set(macs)) == len(macs)
    assert all(m.startswith("52:54:00:") for m in macs)
    assert net.of_vm("x")[1].mac == "52:54:00:aa:bb:cc"
    taken = {assign_mac("t", "x", 0, set())}
    assert assign_mac("t", "x", 0, taken) != next(iter(taken))
    assert net.of_vm("x")[0].ip == IPv4Interface("10.1.0.5/24")


def test_desired_states_tunnels_and_fdb():
    bp, net = setup()
    plan = make_plan(bp, load_catalogue("local"))
    hx, hy = plan.host_of("x"), plan.host_of("y")
    assert hx != hy
    sites = {h: HostSite(h, f"198.18.0.{i + 1}", "ul0", f"/run/r/{h}", "/d", "tcg")
             for i, h in enumerate(sorted({hx, hy}))}
    docs = desired_docs(resolve_app(bp, "t", plan, net.vni), sites)
    dx, dy = docs[hx], docs[hy]
    assert dx["underlay"] == {"device": "ul0", "address": sites[hx].address, "mtu": 1550}
    # network a spans both hosts: each side floods to the other and knows the remote MAC
    ax = next(n for n in dx["networks"] if n["name"] == "a")
    assert ax["peers"] == [sites[hy].address] and ax["vni"] == 1000 and ax["bridge"] == "rb1000"
    assert ax["fdb"] == [{"mac": net.of_vm("y")[0].mac, "dst": sites[hy].address}]
    # network b only has x: no tunnel peers, and y's host does not carry it at all
    bx = next(n for n in dx["networks"] if n["name"] == "b")
    assert bx["peers"] == [] and bx["fdb"] == []
    assert [n["name"] for n in dy["networks"]] == ["a"]
    assert [t["name"] for t in dx["taps"]] == ["rt0n0", "rt0n1"]
    disks = dx["vms"][0]["disks"]
    assert disks[0] == {"path": "/d/x-disk0.qcow2", "base": "/base.vmdk", "base_format": "vmdk"}
    assert disks[1] == {"path": "/d/x-disk1.qcow2", "size_mib": 1024}
    stopped = desired_docs(resolve_app(bp, "t", plan, net.vni), sites, {"x": False})
    assert stopped[hx]["vms"][0]["running"] is False
    assert desired_docs(resolve_app(bp, "t", plan, net.vni), sites) == docs
