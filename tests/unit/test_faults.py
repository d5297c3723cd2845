"""The test-only fault hook: RAVEL_FAULT=STEP:N ends the process at the N-th arrival at STEP."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

from ravel import faults

ROOT = Path(__file__).resolve().parents[2]
CHILD = ("from ravel import faults\n"
         "for i in range(3):\n"
         "    faults.point('publish.applied'); print('passed', i + 1, flush=True)\n")


def run(value: str | None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "RAVEL_FAULT"}
    if value is not None:
        env["RAVEL_FAULT"] = value
    return subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, timeout=30, env=env, cwd=ROOT)


def test_the_nth_arrival_ends_the_process_like_sigkill():
    p = run("publish.applied:2")
    assert p.returncode == faults.EXIT_CODE == 137
    assert p.stdout.split("\n")[:-1] == ["passed 1"]
    assert "RAVEL_FAULT: crashed at publish.applied:2" in p.stderr
    assert run("publish.applied").stdout.strip() == ""  # N defaults to 1
    assert run("publish.done:1").stdout.split() == ["passed", "1", "passed", "2", "passed", "3"]  # another step
    assert run(None).returncode == 0


def test_an_unknown_step_is_refused_with_the_list():
    p = run("publish.nowhere:1")
    assert p.returncode == 2 and "unknown step 'publish.nowhere'" in p.stderr and "publish.applied" in p.stderr


def test_every_step_is_a_point_in_the_code_and_every_point_is_listed():
    used = set()
    for f in (ROOT / "ravel").rglob("*.py"):
        used |= set(re.findall(r'faults\.point\("([a-z_.]+)"\)', f.read_text()))
    assert used == set(faults.STEPS)
    for step in faults.STEPS:  # documented for whoever writes the next test
        assert f"`{step}`" in (ROOT / "docs" / "architecture.md").read_text(), step


def test_cheap_when_unset():
    assert faults._wanted is None  # the test run itself has no fault set
    start = time.perf_counter()
    for _ in range(100_000):
        faults.point("publish.applied")
    assert time.perf_counter() - start < 0.5
