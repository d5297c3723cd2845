"""Admission on this machine, end to end: a lab bigger than the memory left is refused with
exit 3 before anything is made, counting what an app already running here has committed."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from conftest import ROOT, Ravel, force_cleanup, leftovers

SMALL = f"cap{os.getpid()}"
BIG = f"capbig{os.getpid()}"

LAB = """\
name: cap
networks:
  lan: {subnet: 10.66.0.0/24}
defaults:
  cpus: 1
  memory: SIZEMiB
  boot: {kernel: GUEST/vmlinuz, initrd: GUEST/initrd.img, cmdline: console=ttyS0 quiet}
  nics: [{network: lan}]
vms:
  vm: {count: COUNT}
"""


def available_mib() -> int:
    line = next(x for x in Path("/proc/meminfo").read_text().splitlines() if x.startswith("MemAvailable:"))
    return int(line.split()[1]) // 1024


def lab(tmp: Path, name: str, count: int, size_mib: int) -> Path:
    f = tmp / f"{name}.yaml"
    f.write_text(LAB.replace("GUEST", str(ROOT / ".cache" / "guest")).replace("SIZE", str(size_mib))
                 .replace("COUNT", str(count)))
    return f


def refused(r: Ravel, *args: str) -> str:
    p = r(*args, check=False)
    assert p.returncode == 3, p.stdout + p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 2 and lines[0].startswith("error: this lab needs ") and lines[1].startswith("hint:"), lines
    return lines[0]


@pytest.fixture
def ravel(tmp_path):
    r = Ravel(tmp_path / "home")
    try:
        yield r
    finally:
        left = []
        for app in (SMALL, BIG):
            r("destroy", app, "--yes", check=False)
            left += leftovers(app, r.home)
            force_cleanup(app, r.home)
        assert not left, f"left behind: {left}"


def test_a_lab_bigger_than_this_machine_is_refused_and_nothing_is_made(ravel, tmp_path):
    # more guest memory than the machine has free, in VMs each small enough for a local host
    count = available_mib() // 2048 + 2
    big = lab(tmp_path, "big", count, 2048)
    line = refused(ravel, "publish", str(big), "--name", BIG, "--wait")
    assert "biggest VMs: vm-1 2.0 GiB, vm-2 2.0 GiB, vm-3 2.0 GiB" in line
    assert refused(ravel, "plan", str(big)).split(" but ")[0] == line.split(" but ")[0]
    assert leftovers(BIG, ravel.home) == []
    assert not (ravel.home / "state" / "state.db").exists()  # not even a record of it
    assert BIG not in ravel("list").stdout


def test_admission_counts_what_a_running_app_committed(ravel, tmp_path):
    # an app whose guests take 60 % of the free memory but touch little of it yet: a second
    # one as big would fit the memory free now, but not beside what the first will grow to
    share = int(available_mib() * 0.6)
    size = share // 3 // 64 * 64
    ravel("publish", str(lab(tmp_path, "small", 3, size)), "--name", SMALL, "--wait", "--timeout", "240")
    second = lab(tmp_path, "second", 3, size)
    line = refused(ravel, "publish", str(second), "--name", BIG)
    assert "more promised to 1 running app" in line
    assert leftovers(BIG, ravel.home) == []
    assert BIG not in ravel("list").stdout
    # stopped, the first app's guests hold nothing and are owed nothing: the second fits
    ravel("stop", SMALL)
    p = ravel("plan", str(second))
    assert p.returncode == 0
