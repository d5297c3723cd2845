"""`ravel ssh/exec/cp/vnc/ssh-config` on hosts reached over SSH (the local provider's SSH mode:
every host runs its own sshd, as a cloud host does): the guest is reached through the host's
pinned SSH connection (a direct-tcpip channel; unix sockets through the host runtime), never
exposed outside its host. One real Debian guest; the same checks as the namespace lab's
(accesslib.py, run there by test_real_guests.py)."""

from __future__ import annotations

import textwrap

import pytest

import accesslib
from conftest import ROOT, Ravel, force_cleanup, leftovers
from test_ssh_lab import ssh_leftovers, sshd_pids

APP = "ga"
IMAGE = ROOT / ".cache" / "realguest" / "debian12-bios.qcow2"


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    home = tmp_path_factory.mktemp("access-ssh")
    r = Ravel(home)
    bp = home / "ga.yaml"
    bp.write_text(textwrap.dedent(f"""\
        name: {APP}
        networks:
          lan: {{subnet: 10.95.0.0/24, gateway: 10.95.0.1, dhcp: true, dns: true}}
        vms:
          web:
            memory: 640MiB
            cloud_init: true
            disks: [{{image: {IMAGE}}}]
            nics: [{{network: lan}}]
        """))
    try:
        r("publish", str(bp), "--transport", "ssh", "--wait", "--timeout", "900", timeout=960)
        yield r
    finally:
        r("destroy", APP, "--yes", check=False, timeout=300)
        left = ssh_leftovers(APP, home)
        for pid in sshd_pids(APP):
            import os
            import signal
            os.kill(pid, signal.SIGKILL)
        force_cleanup(APP, home)
        assert not left and not leftovers(APP, home), left


def test_the_host_is_reached_over_ssh(lab):
    status = lab.status(APP)
    assert status["web"]["ready"] == "ready"
    config = accesslib.run(lab, "ssh-config", APP).stdout.decode()
    assert "ProxyUseFdpass" not in config  # no namespace socket to hand over: ravel proxy relays


def test_ravel_ssh(lab):
    accesslib.ssh_runs_commands_with_their_output_and_status(lab, APP, ("web",))


def test_ravel_ssh_refuses_a_changed_guest_key(lab):
    accesslib.a_changed_guest_key_is_refused_and_nothing_sent(lab, APP, "web")


def test_ravel_exec(lab):
    accesslib.exec_works_with_the_network_down(lab, APP, "web")


def test_ravel_cp(lab, tmp_path):
    accesslib.cp_round_trips_a_tree_with_modes(lab, APP, "web", tmp_path)


def test_ravel_cp_through_the_guest_agent(lab, tmp_path):
    accesslib.cp_by_agent_round_trips_a_tree(lab, APP, "web", tmp_path)


def test_ssh_config_for_openssh_and_ansible(lab, tmp_path):
    accesslib.ssh_config_and_inventory_serve_openssh_and_ansible(lab, APP, "web", tmp_path)


def test_ravel_vnc(lab):
    accesslib.vnc_forwards_the_console_until_ctrl_c(lab, APP, "web")
