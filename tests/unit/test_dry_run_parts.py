"""The parts of `publish --dry-run`: the host runtime run from memory (it observes, leaves no
file behind and refuses to change anything), and how host actions and blueprint differences
are told as changes. The whole dry run against running hosts: tests/e2e/test_json_lab.py."""

from __future__ import annotations

import os
import subprocess

import pytest

from ravel.host.desired import parse_desired
from ravel.model.resolve import load_blueprint
from ravel.run.dryrun import _firewall_changes, _network_changes, _vm_action
from ravel.transport.hostctl import ReadOnlyRuntime, bundle
from ravel.transport.netns import NamespaceTransport


@pytest.fixture
def namespace():
    ns = f"rvdry-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        yield ns
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=True)


def test_the_runtime_from_memory_observes_and_leaves_nothing(tmp_path, namespace):
    run_dir = tmp_path / "run" / "app"
    desired = parse_desired({
        "version": 1, "app": "app", "host": "host-1", "run_dir": str(run_dir),
        "underlay": {"device": "lo", "address": "127.0.0.1"},
        "networks": [{"name": "n", "vni": 1000, "bridge": "rb1000", "vxlan": "rx1000"}]})
    rt = ReadOnlyRuntime(NamespaceTransport("host-1", namespace), bundle(tmp_path / "cache"))
    report = rt.observe(desired)
    assert [(a["kind"], a["target"]) for a in report["pending"]][:3] == [
        ("run_dir.create", str(run_dir)), ("bridge.create", "rb1000"), ("vxlan.create", "rx1000")]
    assert report["converged"] is False
    assert not (tmp_path / "run").exists()  # not the run dir, not the runtime's file
    links = subprocess.run(["ip", "-n", namespace, "-o", "link"], capture_output=True, text=True).stdout
    assert "rb1000" not in links
    with pytest.raises(ValueError, match="not read-only"):
        rt.apply(desired)


def act(kind: str, target: str, reason: str = "why") -> dict[str, str]:
    return {"kind": kind, "target": target, "reason": reason}


def test_host_actions_become_what_happens_to_a_vm():
    desired = parse_desired({
        "version": 1, "app": "a", "host": "h", "run_dir": "/run/x",
        "vms": [{"name": "db", "argv": ["qemu", "-daemonize", "-pidfile", "/run/x/db.pid"], "pidfile": "/run/x/db.pid", "qmp": "/run/x/db.qmp",
                 "disks": [{"path": "/d/db-disk0.qcow2", "size_mib": 8}]}]})
    assert _vm_action("db", desired, [act("vm.stop", "db", "configuration changed"),
                                      act("vm.start", "db", "configuration changed")]) == \
        ("restart", "configuration changed")
    assert _vm_action("db", desired, [act("vm.start", "db", "not running")]) == ("start", "not running")
    assert _vm_action("db", desired, [act("vm.cont", "db")]) == ("continue", "why")
    assert _vm_action("db", desired, [act("disk.create", "/d/db-disk0.qcow2", "missing")]) == \
        ("update", "disk.create: missing")
    # another VM's actions, and the host's own, are not this VM's
    assert _vm_action("db", desired, [act("vm.start", "web"), act("tap.create", "db")]) is None


def test_blueprint_differences_become_network_and_firewall_changes():
    old = load_blueprint("name: x\nnetworks:\n  a: {subnet: 10.1.0.0/24, gateway: 10.1.0.1}\n"
                         "  b: {subnet: 10.2.0.0/24, gateway: 10.2.0.1}\n"
                         "firewall:\n  allow:\n    - {from: a, to: b, protocol: tcp, ports: [22]}\n"
                         "vms:\n  v: {nics: [{network: a}]}\n")
    new = load_blueprint("name: x\nnetworks:\n  a: {subnet: 10.1.0.0/24, gateway: 10.1.0.1, mtu: 1400}\n"
                         "  c: {subnet: 10.3.0.0/24, gateway: 10.3.0.1}\n"
                         "routing:\n  deny: [[a, c]]\n"
                         "vms:\n  v: {nics: [{network: a}]}\n")
    assert [(c.name, c.action, c.detail) for c in _network_changes(old, new)] == [
        ("a", "change", "mtu 1500 -> 1400"), ("c", "add", "10.3.0.0/24"), ("b", "remove", "10.2.0.0/24")]
    assert [(c.name, c.action) for c in _firewall_changes(old, new)] == [
        ("allow a -> b tcp 22", "remove"), ("deny routing a <-> c", "add")]
    assert _network_changes(new, new) == [] and _firewall_changes(new, new) == []
