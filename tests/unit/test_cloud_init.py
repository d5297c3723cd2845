"""Host boot data: the user-data passes Debian's own `cloud-init schema`, and it and the GCE
startup-script install the same keys, packages and ready report."""

from __future__ import annotations

import shutil
import subprocess

import pytest
import yaml

from ravel.keys import generate
from ravel.render.cloud_init import (
    GCE_HOST_KEY,
    PACKAGES,
    READY_FILE,
    READY_SCRIPT,
    BootData,
    ready_script,
    startup_script,
    user_data,
)

HOST_KEY = generate("ravel-lab-host-1")
USER_KEY = generate("ravel-user")


def boot(**kw) -> BootData:
    base = dict(app="lab", host="host-1", host_key_private=HOST_KEY.private_openssh,
                host_key_public=HOST_KEY.public_line, user_key_public=USER_KEY.public_line, mtu=9001)
    return BootData(**{**base, **kw})


def cloud_init_schema(path) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("cloud-init")
    if exe is None:
        pytest.fail("cloud-init is not installed: run `make setup` (it is in APT_PKGS)")
    return subprocess.run([exe, "schema", "--config-file", str(path)], capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("data", [boot(), boot(app="a-much-longer-app-name-0123456789", host="host-12", mtu=8896)])
def test_user_data_passes_cloud_init_schema(tmp_path, data):
    f = tmp_path / "user-data"
    f.write_text(user_data(data))
    p = cloud_init_schema(f)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "Valid cloud-config" in p.stdout


def test_schema_check_rejects_broken_user_data(tmp_path):
    # the validator is not a rubber stamp: the same document with one key broken is refused
    doc = yaml.safe_load(user_data(boot()))
    doc["packages"] = "qemu-system-x86"
    doc["ssh_pwauth"] = "maybe"
    f = tmp_path / "user-data"
    f.write_text("#cloud-config\n" + yaml.safe_dump(doc))
    p = cloud_init_schema(f)
    assert p.returncode != 0
    assert "packages" in p.stdout + p.stderr


def test_user_data_installs_keys_packages_and_ready_report():
    text = user_data(boot())
    assert text.startswith("#cloud-config\n")
    doc = yaml.safe_load(text)
    assert doc["ssh_keys"] == {"ed25519_private": HOST_KEY.private_openssh.strip() + "\n",
                               "ed25519_public": HOST_KEY.public_line}
    assert doc["ssh_deletekeys"] is True  # only ravel's pinned key is offered
    assert doc["ssh_authorized_keys"] == [USER_KEY.public_line]
    assert doc["disable_root"] is False and doc["ssh_pwauth"] is False
    assert doc["packages"] == list(PACKAGES)
    assert {"qemu-system-x86", "qemu-utils", "iproute2", "python3"} <= set(doc["packages"])
    files = {f["path"]: f for f in doc["write_files"]}
    assert files[READY_SCRIPT]["content"] == ready_script(boot())
    assert files[READY_SCRIPT]["permissions"] == "0755"
    assert doc["runcmd"] == [[READY_SCRIPT]]
    assert "RAVEL-HOST-READY host-1" in doc["final_message"]
    assert USER_KEY.private_openssh not in text  # ravel's own private key never leaves this machine


def test_ready_script_raises_mtu_and_writes_report():
    s = ready_script(boot(mtu=8896))
    assert 'ip link set dev "$dev" mtu 8896' in s
    assert READY_FILE in s and "/sys/hypervisor/type" in s and "/sys/class/dmi/id/sys_vendor" in s
    assert subprocess.run(["sh", "-n"], input=s, text=True).returncode == 0


def test_startup_script_does_the_same_as_user_data():
    data = boot(mtu=8896)
    s = startup_script(data)
    assert s.startswith("#!/bin/bash\n")
    assert subprocess.run(["bash", "-n"], input=s, text=True, capture_output=True).returncode == 0
    assert HOST_KEY.private_openssh.strip() in s and HOST_KEY.public_line in s
    assert f"HostKey {GCE_HOST_KEY}" in s and "PasswordAuthentication no" in s
    assert USER_KEY.public_line in s and "/root/.ssh/authorized_keys" in s
    for pkg in PACKAGES:
        assert pkg in s
    # the ready script is embedded verbatim (quoted heredoc: no expansion at write time)
    assert ready_script(data) in s and "<<'RAVEL_READY_EOF'" in s
    assert s.rstrip().endswith(READY_SCRIPT)


def test_boot_data_is_deterministic():
    assert user_data(boot()) == user_data(boot())
    assert startup_script(boot()) == startup_script(boot())
    assert user_data(boot(host="host-2")) != user_data(boot())
