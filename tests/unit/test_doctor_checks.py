"""The pure parts of `ravel doctor`: the --json document, which failures make it fail, the exit
status (9 for the machine before 7 for the state), QEMU versions, the state's line."""

from __future__ import annotations

from pathlib import Path

from ravel.cli.exits import ExitStatus, doctor_status
from ravel.run.checks import Check, missing, report
from ravel.run.doctor import StateCheck, state_line
from ravel.run.machine import qemu_check

QEMU_PATH = "/usr/bin/qemu-system-x86_64"


def test_report_fails_only_on_a_required_check():
    ok = Check("qemu", True, True, "QEMU 7.2.22")
    kvm = Check("kvm", False, False, "KVM does not work", "enable VT-x")
    dnsmasq = Check("dnsmasq", False, True, "dnsmasq is not installed", "apt-get install dnsmasq-base")
    assert report([ok, kvm]) == {
        "checks": [{"name": "qemu", "ok": True, "required": True, "detail": "QEMU 7.2.22", "fix": ""},
                   {"name": "kvm", "ok": False, "required": False, "detail": "KVM does not work",
                    "fix": "enable VT-x"}],
        "ok": True}
    assert report([ok, kvm, dnsmasq])["ok"] is False
    assert missing([ok, kvm, dnsmasq]) == [dnsmasq]


def test_exit_status_machine_first_then_state():
    assert doctor_status([]) == ExitStatus.OK == 0
    assert doctor_status(["state"]) == ExitStatus.STATE == 7
    assert doctor_status(["dnsmasq"]) == ExitStatus.ENVIRONMENT == 9
    assert doctor_status(["state", "root"]) == ExitStatus.ENVIRONMENT


def test_qemu_versions():
    assert qemu_check({"path": QEMU_PATH, "version": "7.2.22"}) == \
        Check("qemu", True, True, f"QEMU 7.2.22 ({QEMU_PATH})")
    assert qemu_check({"path": QEMU_PATH, "version": "10.0.2"}).ok  # compared as numbers
    old = qemu_check({"path": QEMU_PATH, "version": "6.2.0"})
    assert (old.ok, old.required) == (False, False) and "older than 7.2" in old.detail
    assert qemu_check(None) == Check("qemu", False, True, "qemu-system-x86_64 is not installed",
                                     "apt-get install qemu-system-x86")
    broken = qemu_check({"path": QEMU_PATH, "version": ""})
    assert (broken.ok, broken.required) == (False, True) and "--reinstall" in broken.fix


def test_state_line():
    db = Path("/h/state/state.db")
    assert state_line(StateCheck(db, apps=["a", "b"], backups=["a"])) == \
        Check("state", True, True, "/h/state/state.db: sound, 2 app(s), 1 backed up")
    lost = state_line(StateCheck(db, problems=["row 3 missing"], lost=["beta"], unknown=["gamma"]))
    assert (lost.ok, lost.required, lost.fix) == (False, True, "ravel doctor --repair-state")
    assert lost.detail == ("/h/state/state.db: damaged: row 3 missing; lost apps (they have backups): "
                           "beta; apps on this machine's hosts the state does not know: gamma")
