"""Every device model the blueprint offers is one this QEMU accepts, and UEFI guests boot.

The demo guest kernel has drivers only for virtio, vmxnet3 and pvscsi, so the other models are
checked at the hypervisor: QEMU starts with the rendered command line and lists the devices.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

from conftest import GUEST
from guestlib import Console
from ravel.model.resolve import load_blueprint
from ravel.plan.network import plan_network
from ravel.render.qemu import VmFiles, qemu_argv

BLUEPRINT = """\
name: dev
networks:
  n: {subnet: 10.0.0.0/24}
vms:
  all-q35:
    firmware: uefi
    disks: [{size: 16MiB, bus: virtio}, {size: 16MiB, bus: pvscsi}, {size: 16MiB, bus: lsilogic},
            {size: 16MiB, bus: sata}, {size: 16MiB, bus: sata}]
    nics: [{network: n, model: virtio}, {network: n, model: e1000}, {network: n, model: vmxnet3}]
  all-pc:
    disks: [{size: 16MiB, bus: ide}, {size: 16MiB, bus: ide}, {size: 16MiB, bus: ide}]
    nics: [{network: n, model: e1000}]
  uefi-boot:
    firmware: uefi
    memory: 256MiB
    boot: {kernel: GUEST/vmlinuz, initrd: GUEST/initrd.img, cmdline: console=ttyS0 quiet}
    nics: [{network: n, ip: 10.0.0.5}]
"""


def qmp(path: str, command: str) -> dict:
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(10)
    s.connect(path)
    f = s.makefile("rw")
    json.loads(f.readline())
    for cmd in ("qmp_capabilities", command):
        f.write(json.dumps({"execute": cmd}) + "\n")
        f.flush()
        while True:
            msg = json.loads(f.readline())
            if "return" in msg or "error" in msg:
                break
    s.close()
    return msg


@pytest.fixture
def vms(tmp_path):
    bp = load_blueprint(BLUEPRINT.replace("GUEST", str(GUEST)), "dev.yaml")
    net = plan_network(bp, "dev", {"n": 1000})
    started: list[int] = []
    run = Path(f"/tmp/rvdev{os.getpid()}")
    run.mkdir(exist_ok=True)

    def start(name: str, paused: bool) -> dict:
        vm = bp.vm(name)
        disks = []
        for i, d in enumerate(vm.disks):
            p = tmp_path / f"{name}-{i}.qcow2"
            subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(p), f"{d.size_mib}M"], check=True)
            disks.append(str(p))
        files = VmFiles(str(run), tuple(disks))
        argv = qemu_argv("dev", vm, net.of_vm(name), [f"t{i}" for i in range(len(vm.nics))], files, "tcg")
        # no taps outside a namespace here: the same NIC models on a hub port that goes nowhere
        argv = [a.replace("tap,id=", "hubport,hubid=0,id=").split(",ifname=")[0] if a.startswith("tap,") else a
                for a in argv]
        if paused:
            argv.append("-S")
        p = subprocess.run(argv, capture_output=True, text=True, timeout=60)
        assert p.returncode == 0, p.stderr
        pid = int(Path(files.path(name, "pid")).read_text())
        started.append(pid)
        return {"qmp": files.path(name, "qmp"), "log": files.path(name, "log"), "pid": pid}

    yield start
    for pid in started:
        try:
            os.kill(pid, 9)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(Path(f"/proc/{p}").exists() for p in started):
        time.sleep(0.05)
    shutil.rmtree(run, ignore_errors=True)


def test_every_disk_bus_and_nic_model_is_accepted(vms):
    q35 = vms("all-q35", paused=True)
    devices = json.dumps(qmp(q35["qmp"], "query-pci"))
    for dev_id in ("0x1af4", "0x15ad"):  # virtio and VMware (vmxnet3, pvscsi) vendor ids
        assert str(int(dev_id, 16)) in devices
    blocks = [b["device"] or b["qdev"] for b in qmp(q35["qmp"], "query-block")["return"]]
    assert len([b for b in blocks if b]) >= 5
    pc = vms("all-pc", paused=True)
    assert len(qmp(pc["qmp"], "query-block")["return"]) >= 3


def test_uefi_guest_boots(vms):
    vm = vms("uefi-boot", paused=False)
    deadline = time.monotonic() + 120
    text = ""
    while time.monotonic() < deadline:
        text = Path(vm["log"]).read_text(errors="replace") if Path(vm["log"]).exists() else ""
        if "RAVEL-READY uefi-boot" in text:
            break
        time.sleep(0.5)
    assert "RAVEL-READY uefi-boot" in text, text[-2000:]
    with Console(vm["qmp"].replace(".qmp", ".serial"), log=vm["log"]) as con:
        assert con.check("test -d /sys/firmware/efi && echo booted-by-uefi").strip() == "booted-by-uefi"
