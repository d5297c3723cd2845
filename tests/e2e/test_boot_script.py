"""The host bootstrap's last step, run for real: in a network namespace of its own (a veth pair
as the underlay, both ends inside, a default route that leads nowhere) and a private mount namespace (a tmpfs over
/var/lib, /dev/null over /dev/console), the ready script raises the MTU of the default-route
device and writes a ready report ravel can parse."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from ravel.keys import generate
from ravel.render.cloud_init import READY_FILE, BootData, ready_script


@pytest.fixture
def ns():
    name = f"rvboot-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        for cmd in (["link", "set", "lo", "up"], ["link", "add", "eth0", "type", "veth", "peer", "name", "eth0p"],
                    ["addr", "add", "198.18.77.2/24", "dev", "eth0"], ["link", "set", "eth0p", "up"],
                    ["link", "set", "eth0", "up"],
                    ["route", "add", "default", "via", "198.18.77.1", "dev", "eth0"]):
            subprocess.run(["ip", "-n", name, *cmd], check=True)
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True)


@pytest.mark.parametrize("mtu", [9001, 8896])
def test_ready_script_raises_mtu_and_reports(ns, tmp_path, mtu):
    host_key, user_key = generate("h"), generate("u")
    script = tmp_path / "ready.sh"
    script.write_text(ready_script(BootData("lab", "host-3", host_key.private_openssh, host_key.public_line,
                                            user_key.public_line, mtu)))
    inner = (f"mount -t tmpfs tmpfs /var/lib && mount --bind /dev/null /dev/console && "
             f"sh {script} && cat {READY_FILE}")
    p = subprocess.run(["ip", "netns", "exec", ns, "unshare", "--mount", "--propagation", "private",
                        "sh", "-c", inner], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    report = json.loads(p.stdout)
    assert report["status"] == "ready", report  # QEMU, qemu-img, ip and python3 are all here
    assert (report["app"], report["host"]) == ("lab", "host-3")
    assert report["underlay_device"] == "eth0" and report["underlay_address"] == "198.18.77.2"
    assert report["mtu"] == mtu
    link = subprocess.run(["ip", "-n", ns, "-j", "link", "show", "dev", "eth0"], capture_output=True, text=True)
    assert json.loads(link.stdout)[0]["mtu"] == mtu
    assert isinstance(report["dev_kvm"], bool) and isinstance(report["cpu_virt"], bool)
    assert not os.path.exists(READY_FILE)  # written in the private mount namespace only
