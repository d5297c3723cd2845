"""Fifty guests on ten namespace hosts of a 2-core machine (issue 14): published with --wait,
all ready, destroyed with nothing left. Started in waves as CPU frees up (ravel/run/waves.py).

About 2.5 minutes on an otherwise idle 2-core machine, so it is marked `scale`: `make test`
leaves it out, `make test-scale` (and CI) runs it, and bench/scale_bench.py times it.
"""

from __future__ import annotations

import os
import re
import time

import pytest

from conftest import Ravel, force_cleanup, leftovers, qemu_pids

APP = f"scale{os.getpid()}"

pytestmark = pytest.mark.scale


def test_fifty_guests_publish_all_ready_and_leave_nothing(tmp_path):
    r = Ravel(tmp_path / "home")
    try:
        t = time.monotonic()
        p = r("publish", "blueprints/scale-50.yaml", "--name", APP, "--wait", "--timeout", "900", timeout=960)
        took = time.monotonic() - t
        assert "all VMs ready" in p.stdout
        status = r.status(APP)
        assert len(status) == 50
        late = {vm: (v["state"], v["ready"], v.get("seen")) for vm, v in status.items()
                if (v["state"], v["ready"]) != ("running", "ready")}
        assert not late, late
        assert len({v["host"] for v in status.values()}) == 10
        assert len(qemu_pids(APP)) == 50
        # started in waves, never all at once, and progress said how many were booting and ready
        waves = re.findall(r"(\d+) ready, (\d+) booting, (\d+) waiting to start", p.stderr)
        assert waves, p.stderr
        assert max(int(b) for _, b, _ in waves) <= 2 * len(os.sched_getaffinity(0))
        assert "50 of 50 ready, 0 booting" in p.stderr
        print(f"50 VMs ready after {took:.0f} s")
    finally:
        r("destroy", APP, "--yes", check=False, timeout=300)
        left = leftovers(APP, r.home)
        force_cleanup(APP, r.home)
        assert not left, f"left behind: {left}"
