"""KSM for identical guests: which hosts want it (plan), what the host runtime does about it
(reconcile), and the shared switch's markers (host/ksm.py, on files standing in for sysfs)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from ravel.host import ksm
from ravel.host.desired import parse_desired, to_doc
from ravel.host.facts import Facts
from ravel.host.ksm import KsmFacts
from ravel.host.reconcile import reconcile, teardown
from ravel.model.resolve import load_blueprint
from ravel.plan.catalogue import Machine, load_catalogue
from ravel.plan.local_types import local_catalogue
from ravel.plan.plan import make_plan

ROOT = Path(__file__).resolve().parents[2]
LOCAL = local_catalogue(load_catalogue("local"), Machine(2, 24000))
RUN = "/run/ravel/t/app/host-1"


def plan_of(text: str, mode: str | None = None):  # type: ignore[no-untyped-def]
    return make_plan(load_blueprint(text, "k.yaml"), LOCAL, mode)


LAB = """\
name: k
vms:
  deb: {count: 3, memory: 256MiB, disks: [{image: /images/debian.qcow2}]}
  other: {memory: 256MiB, disks: [{image: /images/other.qcow2}]}
  lone: {memory: 256MiB, disks: [{image: /images/lone.qcow2}]}
placement: {host_types: [local-medium], anti_affinity: [[lone, deb-1]]}
"""


def test_hosts_with_several_guests_of_one_image_want_ksm_in_cost_mode_only() -> None:
    plan = plan_of(LAB)
    hosts = {h.name: h.vms for h in plan.placement.hosts}
    want = plan.ksm_hosts()
    for name, vms in hosts.items():
        debs = sum(vm.startswith("deb") for vm in vms)
        assert (name in want) == (debs >= 2), (hosts, want)
    assert want and all(h["ksm"] == (h["name"] in want) for h in plan.to_dict()["hosts"])
    assert plan_of(LAB, "performance").ksm_hosts() == {}
    # direct-kernel-boot guests of one kernel and initrd are one image too
    scale = make_plan(load_blueprint((ROOT / "blueprints/scale-50.yaml").read_text(), "s.yaml"), LOCAL)
    assert scale.ksm_hosts() == {f"host-{i}": 5 for i in range(1, 11)}


DOC = {"version": 1, "app": "app", "host": "host-1", "run_dir": RUN}


def test_the_runtime_turns_ksm_on_and_releases_it() -> None:
    want = parse_desired({**DOC, "ksm": True})
    assert to_doc(want)["ksm"] is True and "ksm" not in to_doc(parse_desired(DOC))  # sparse
    base = Facts(run_dir=RUN, run_dir_exists=True, run_dir_mode=0o700)
    on = [a for a in reconcile(want, replace(base, ksm=KsmFacts("0", False))) if a.kind.startswith("ksm")]
    assert [(a.kind, a.params) for a in on] == [("ksm.on", {"run_dir": RUN})]
    # on already (by someone else): this host still notes that it wants it
    assert [a.kind for a in reconcile(want, replace(base, ksm=KsmFacts("1", False)))] == ["ksm.on"]
    assert reconcile(want, replace(base, ksm=KsmFacts("1", True))) == []
    assert reconcile(want, replace(base, ksm=KsmFacts(None, False))) == []  # a kernel without KSM
    plain = parse_desired(DOC)
    assert [a.kind for a in reconcile(plain, replace(base, ksm=KsmFacts("1", True)))] == ["ksm.release"]
    assert reconcile(plain, replace(base, ksm=KsmFacts("1", False))) == []
    gone = teardown(replace(base, ksm=KsmFacts("1", True)))
    assert ("ksm.release", {"run_dir": RUN}) in [(a.kind, a.params) for a in gone]


@pytest.fixture
def switch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    run = tmp_path / "run"
    run.write_text("0\n")
    monkeypatch.setattr(ksm, "RUN", str(run))
    monkeypatch.setattr(ksm, "MARKS", str(tmp_path / "marks"))
    return run


def test_the_last_host_to_let_go_turns_ksm_back_off(switch: Path) -> None:
    assert ksm.gather("/a") == KsmFacts("0", False)
    assert ksm.turn_on("/a") == "on"
    assert switch.read_text() == "1" and ksm.gather("/a") == KsmFacts("1", True)
    assert ksm.turn_on("/b") == "already on"
    assert ksm.release("/a") == "left on" and switch.read_text() == "1"
    assert ksm.release("/b") == "back to 0" and switch.read_text() == "0"
    assert ksm.gather("/b") == KsmFacts("0", False)


def test_ksm_that_was_on_before_stays_on(switch: Path) -> None:
    switch.write_text("1\n")
    assert ksm.turn_on("/a") == "already on"
    assert ksm.release("/a") == "left as it was before ravel" and switch.read_text() == "1\n"
