"""Real guests: an unmodified Debian 12 image (built by `make setup` from Debian packages, with
nothing of ravel's in it) boots in ravel with cloud-init, three ways at once on two hosts:
BIOS on virtio, VMware-style (a streamOptimized VMDK on pvscsi, a vmxnet3 NIC) and UEFI.

One lab for the module (real OS guests take ~35 s each to boot under TCG): publish --wait
returns once SSH answers on all three; hostname, fixed lease, names and reachability are checked
inside the guests over SSH with the pinned host keys ravel made; then a no-op re-publish,
stop/start of the UEFI guest (its variables and disk kept), and snapshot -> destroy ->
publish --from booting the same guests with their files.
"""

from __future__ import annotations

import hashlib
import subprocess
import textwrap
import time
from pathlib import Path

import pytest

import accesslib
from conftest import ROOT, Ravel, force_cleanup, leftovers

APP = "rg"
IMAGES = ROOT / ".cache" / "realguest"
VMS = ("bios", "vmw", "uefi")
# an EFI variable the UEFI guest writes (a GUID of our own): it must survive stop/start and snapshots
EFIVAR = "RavelTest-b2ac5fc9-92b7-4acd-aeac-11e818c3130c"  # not the global GUID: its names are reserved


def images() -> dict[str, Path]:
    """The Debian images (built once, cached by `make setup`), and a VMware streamOptimized
    VMDK made from the BIOS one (cached by the source's checksum)."""
    subprocess.run(["bash", str(ROOT / "guest" / "debian" / "build.sh"), str(IMAGES)], check=True, timeout=1800)
    bios = IMAGES / "debian12-bios.qcow2"
    vmdk = IMAGES / "debian12-vmware.vmdk"
    stamp = vmdk.with_suffix(".source")
    source = hashlib.sha256(bios.read_bytes()[:1 << 20] + str(bios.stat().st_size).encode()).hexdigest()
    if not vmdk.exists() or not stamp.exists() or stamp.read_text() != source:
        tmp = vmdk.with_suffix(".tmp")
        subprocess.run(["qemu-img", "convert", "-O", "vmdk", "-o", "subformat=streamOptimized", str(bios), str(tmp)],
                       check=True, timeout=600)
        tmp.rename(vmdk)
        stamp.write_text(source)
    return {"bios": bios, "uefi": IMAGES / "debian12-uefi.qcow2", "vmdk": vmdk}


def blueprint(img: dict[str, Path]) -> str:
    return textwrap.dedent(f"""\
        name: {APP}
        networks:
          lan: {{subnet: 10.91.0.0/24, gateway: 10.91.0.1, dhcp: true, dns: true}}
        defaults:
          memory: 640MiB
          cloud_init: true
        vms:
          bios:
            disks: [{{image: {img['bios']}}}]
            nics: [{{network: lan}}]
          vmw:
            disks: [{{image: {img['vmdk']}, bus: pvscsi}}]
            nics: [{{network: lan, model: vmxnet3}}]
          uefi:
            firmware: uefi
            disks: [{{image: {img['uefi']}}}]
            nics: [{{network: lan}}]
        placement:
          anti_affinity: [[bios, vmw]]
        """)


def ssh(r: Ravel, app: str, vm: str, command: str, timeout: float = 60, check: bool = True) -> str:
    """A command in the guest over SSH from its host's namespace, the guest's host key pinned
    (the one ravel made and put in its seed: a different key is refused)."""
    v = r.status(app)[vm]
    ip = v["ips"][0].split("/")[0]
    known = r.home / f"known_{app}_{vm}"
    known.write_text(f"{ip} {v['host_key']}\n")
    p = subprocess.run(["ip", "netns", "exec", f"rv-{app}-{v['host']}", "ssh", "-F", "/dev/null",
                        "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes", "-o", f"UserKnownHostsFile={known}",
                        "-o", "HostKeyAlgorithms=ssh-ed25519", "-o", "ConnectTimeout=10",
                        "-i", str(r.home / "state" / "keys" / "id_ed25519"), f"{v['user']}@{ip}", command],
                       capture_output=True, text=True, timeout=timeout)
    if check:
        assert p.returncode == 0, f"{vm}: {command!r} -> {p.returncode}\n{p.stdout}\n{p.stderr}"
    return p.stdout


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    home = tmp_path_factory.mktemp("realguest")
    r = Ravel(home)
    bp = home / "rg.yaml"
    bp.write_text(blueprint(images()))
    started = time.monotonic()
    p = r("publish", str(bp), "--wait", "--timeout", "900", timeout=960)
    took = time.monotonic() - started
    try:
        yield r, bp, p, took
    finally:
        for app in (APP, "rg2"):
            r("destroy", app, "--yes", check=False, timeout=300)
            left = leftovers(app, home)
            force_cleanup(app, home)
            assert not left, left


def test_publish_waits_until_ssh_answers_on_all_three(lab):
    r, _, p, took = lab
    status = r.status(APP)
    assert {v: status[v]["ready"] for v in VMS} == {v: "ready" for v in VMS}, status
    assert {status[v]["check"] for v in VMS} == {"ssh"}
    assert status["bios"]["host"] != status["vmw"]["host"]  # two hosts, one L2 network
    for v in VMS:  # SSH answers at once: --wait did not return early
        assert ssh(r, APP, v, "true", timeout=30) == ""
    print(f"publish --wait of 3 Debian guests: {took:.0f} s")


def test_hostname_lease_names_and_pings(lab):
    r = lab[0]
    status = r.status(APP)
    for v in VMS:
        out = ssh(r, APP, v, "hostname; hostname -f; ip -4 -o addr show scope global; sudo -n id -u")
        lines = out.splitlines()
        assert lines[0] == v and lines[1] == f"{v}.{APP}.lab", out
        assert f" {status[v]['ips'][0]} " in lines[2], (out, status[v]["ips"])  # its fixed lease
        assert lines[-1] == "0"  # the seed's user has passwordless sudo
        for other in VMS:
            if other == v:
                continue
            name = ssh(r, APP, v, f"getent ahostsv4 {other} | head -1").split()
            assert name and name[0] == status[other]["ips"][0].split("/")[0], (v, other, name)
            ssh(r, APP, v, f"ping -c 1 -W 5 {other}")


def test_the_vmware_guest_runs_on_pvscsi_and_vmxnet3(lab):
    r = lab[0]
    drivers = ssh(r, APP, "vmw", "readlink /sys/class/net/$(ip -o -4 route show default | awk '{print $5}')/device/driver;"
                                 " ls /sys/bus/pci/drivers/vmw_pvscsi | grep -c :")
    assert drivers.splitlines()[0].endswith("/vmxnet3") and int(drivers.splitlines()[1]) >= 1, drivers


def test_a_guest_with_another_host_key_is_refused(lab, tmp_path):
    r = lab[0]
    v = r.status(APP)["bios"]
    ip = v["ips"][0].split("/")[0]
    other = r.status(APP)["vmw"]["host_key"]  # a real key, but not this guest's
    known = tmp_path / "known"
    known.write_text(f"{ip} {other}\n")
    p = subprocess.run(["ip", "netns", "exec", f"rv-{APP}-{v['host']}", "ssh", "-F", "/dev/null", "-o", "BatchMode=yes",
                        "-o", "StrictHostKeyChecking=yes", "-o", f"UserKnownHostsFile={known}",
                        "-i", str(r.home / "state" / "keys" / "id_ed25519"), f"ravel@{ip}", "true"],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode != 0 and "REMOTE HOST IDENTIFICATION HAS CHANGED" in p.stderr, p.stderr


def test_second_publish_changes_nothing(lab):
    r, bp, _, _ = lab
    p = r("publish", str(bp))
    assert "nothing to do" in (p.stdout + p.stderr).lower() or " 0 change" in p.stdout, p.stdout + p.stderr


# -- ways in: ravel ssh, exec, cp, vnc, ssh-config, inventory (accesslib.py; also over SSH hosts) ---

def test_ravel_ssh_runs_commands_on_every_guest(lab):
    accesslib.ssh_runs_commands_with_their_output_and_status(lab[0], APP, VMS)


def test_ravel_ssh_is_interactive_under_a_pty(lab):
    accesslib.ssh_is_interactive_under_a_pty(lab[0], APP, "uefi")


def test_ravel_ssh_and_cp_refuse_a_changed_guest_key(lab):
    accesslib.a_changed_guest_key_is_refused_and_nothing_sent(lab[0], APP, "vmw")


def test_ravel_exec_works_with_the_guest_network_down(lab):
    accesslib.exec_works_with_the_network_down(lab[0], APP, "vmw")


def test_ravel_cp_round_trips_a_tree_and_leaves_nothing_when_interrupted(lab, tmp_path):
    accesslib.cp_round_trips_a_tree_with_modes(lab[0], APP, "bios", tmp_path)
    accesslib.an_interrupted_copy_leaves_no_partial_file(lab[0], APP, "bios", tmp_path)


def test_ravel_cp_through_the_guest_agent(lab, tmp_path):
    accesslib.cp_by_agent_round_trips_a_tree(lab[0], APP, "uefi", tmp_path)


def test_ssh_config_and_inventory_for_openssh_and_ansible(lab, tmp_path):
    accesslib.ssh_config_and_inventory_serve_openssh_and_ansible(lab[0], APP, "vmw", tmp_path)


def test_ravel_vnc_forwards_the_console(lab):
    accesslib.vnc_forwards_the_console_until_ctrl_c(lab[0], APP, "uefi")


def test_stop_start_keeps_uefi_variables_and_the_disk(lab):
    r, bp, _, _ = lab
    # no `sync`: stopping a guest lets it shut down, so what it wrote reaches its disk
    ssh(r, APP, "uefi", f"printf '\\x07\\x00\\x00\\x00kept' | sudo tee /sys/firmware/efi/efivars/{EFIVAR} >/dev/null;"
                        " echo on-disk | sudo tee /var/tmp/marker >/dev/null")
    r("stop", APP, "uefi")
    r("start", APP, "uefi")
    r("publish", str(bp), "--wait", "--timeout", "600", timeout=660)
    out = ssh(r, APP, "uefi", f"tail -c 4 /sys/firmware/efi/efivars/{EFIVAR}; echo; cat /var/tmp/marker")
    assert out.split() == ["kept", "on-disk"], out


def test_snapshot_destroy_publish_from_boots_the_same_guests(lab):
    r, _, _, _ = lab
    for v in VMS:
        ssh(r, APP, v, f"echo before-snapshot-{v} | sudo tee /var/tmp/snap >/dev/null; sync")
    r("snapshot", APP, "--name", "rg-snap", timeout=600)
    r("destroy", APP, "--yes", timeout=300)
    assert not leftovers(APP, r.home)
    r("publish", "--from", "rg-snap", "--name", "rg2", "--wait", "--timeout", "900", timeout=960)
    status = r.status("rg2")
    assert {status[v]["ready"] for v in VMS} == {"ready"}
    for v in VMS:
        out = ssh(r, "rg2", v, "cat /var/tmp/snap; hostname")
        assert out.split() == [f"before-snapshot-{v}", v], out
    efi = ssh(r, "rg2", "uefi", f"tail -c 4 /sys/firmware/efi/efivars/{EFIVAR}")
    assert efi == "kept", efi


@pytest.fixture(scope="module")
def checks(lab, tmp_path_factory):
    """Readiness checks other than SSH, and a VM that never boots, in an app of their own."""
    r = lab[0]
    d = tmp_path_factory.mktemp("checks")
    bp = d / "checks.yaml"
    guest = ROOT / ".cache" / "guest"
    bp.write_text(textwrap.dedent(f"""\
        name: rgc
        networks:
          lan: {{subnet: 10.92.0.0/24}}
        vms:
          con:
            memory: 256MiB
            boot: {{kernel: {guest}/vmlinuz, initrd: {guest}/initrd.img, cmdline: console=ttyS0}}
            nics: [{{network: lan, ip: 10.92.0.5}}]
            ready: {{console: "RAVEL-READY con"}}
          idle:
            memory: 128MiB
            disks: [{{size: 64MiB}}]
            ready: none
          blank:
            memory: 256MiB
            disks: [{{size: 64MiB}}]
            nics: [{{network: lan, ip: 10.92.0.9}}]
            cloud_init: true
        """))
    yield r, bp
    r("destroy", "rgc", "--yes", check=False)
    left = leftovers("rgc", r.home)
    force_cleanup("rgc", r.home)
    assert not left, left


def test_a_guest_that_never_boots_fails_wait_with_its_check_and_console(checks):
    r, bp = checks
    started = time.monotonic()
    p = r("publish", str(bp), "--wait", "--timeout", "30", check=False, timeout=120)
    assert p.returncode == 7, p.stdout + p.stderr
    assert time.monotonic() - started < 50
    err = [line for line in p.stderr.splitlines() if line.startswith("error:")]
    assert len(err) == 1 and err[0].startswith("error: VM blank not ready after"), p.stderr
    assert "ssh check: 10.92.0.9:22" in err[0] and ("console" in err[0]), err[0]
    status = r.status("rgc")
    assert status["con"]["ready"] == "ready" and status["con"]["check"] == "console /RAVEL-READY con/"
    assert status["idle"]["ready"] == "not checked"
    assert status["blank"]["ready"] == "booting" and status["blank"]["booting_s"] >= 20
