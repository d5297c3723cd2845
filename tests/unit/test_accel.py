"""The accelerator a host's VMs run with: KVM only where the host's own probe says it works."""

from __future__ import annotations

import pytest

from ravel.run.accel import AccelChoice, choose_accel, probe_is_current

WORKS = {"kvm": {"works": True, "detail": "KVM API 12: ran a vCPU to HLT ..."}, "ref": "i-1"}
EMULATED = {"kvm": {"works": False, "detail": "KVM runs guests by emulation, not hardware "
                                              "virtualization"}, "ref": "i-1"}
NO_DEVICE = {"kvm": {"works": False, "detail": "/dev/kvm does not exist"}, "ref": "i-1"}


@pytest.mark.parametrize("planned, facts, accel", [
    ("kvm", WORKS, "kvm"),
    ("tcg", WORKS, "kvm"),  # a local machine with working KVM gets it, whatever the catalogue says
    ("kvm", EMULATED, "tcg"),
    ("kvm", NO_DEVICE, "tcg"),
    ("tcg", EMULATED, "tcg"),
    ("kvm", None, "tcg"),  # no probe: never kvm
    ("kvm", {"kvm": {"works": "yes"}}, "tcg"),  # only a real true counts
])
def test_kvm_only_where_the_probe_says_it_works(planned, facts, accel):
    assert choose_accel(planned, facts).accel == accel


def test_a_fallback_from_the_plan_says_why_and_nothing_else_does():
    note = choose_accel("kvm", EMULATED).note
    assert note and "planned for kvm" in note and "by emulation" in note and note.endswith("use tcg")
    assert choose_accel("kvm", None).note and "did not run" in choose_accel("kvm", None).note
    assert choose_accel("tcg", EMULATED) == AccelChoice("tcg")
    assert choose_accel("tcg", WORKS) == AccelChoice("kvm")
    assert choose_accel("kvm", WORKS) == AccelChoice("kvm")


def test_a_probe_counts_only_for_the_host_it_ran_on():
    assert probe_is_current(WORKS, "i-1")
    assert not probe_is_current(WORKS, "i-2")  # the provider replaced the host: probe again
    assert not probe_is_current(None, "i-1") and not probe_is_current({}, "i-1")
    assert not probe_is_current({"ref": "i-1"}, "i-1")  # a record without the probe's result
