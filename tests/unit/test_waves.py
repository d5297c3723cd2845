"""Booting in waves: the queue's bookkeeping, and how the local pool sizes itself from the CPU
the lab's own guests take (measured on real processes)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ravel.run.waves import (
    FIRST_PATIENCE_S,
    MIN_PATIENCE_S,
    PATIENCE_FACTOR,
    BootQueue,
    GuestCpu,
    host_room,
    local_room,
)


def test_vms_start_in_order_as_their_pool_has_room() -> None:
    q = BootQueue([f"v{i}" for i in range(6)], {f"v{i}": "a" if i < 4 else "b" for i in range(6)})
    room = host_room({"a": 2, "b": 1})
    assert q.take(0.0, room) == ["v0", "v1", "v4"]  # a full pool does not hold up the other
    assert q.take(1.0, room) == []
    q.mark_ready("v0", 5.0)
    assert q.take(5.0, room) == ["v2"]
    assert q.counts(5.0) == (1, 3, 2)
    q.mark_ready("v4", 6.0)
    assert q.take(6.0, room) == ["v5"]
    assert q.ready == {"v0": 5.0, "v4": 6.0}


def test_a_slow_guest_gives_its_place_up_after_the_patience() -> None:
    q = BootQueue(["a", "b", "c"], {"a": "p", "b": "p", "c": "p"})
    room = host_room({"p": 1})
    assert q.patience() == FIRST_PATIENCE_S
    assert q.take(0.0, room) == ["a"]
    assert q.take(FIRST_PATIENCE_S - 1, room) == []
    assert q.take(FIRST_PATIENCE_S, room) == ["b"]  # a is slow now: it still boots, without a place
    assert q.slow(FIRST_PATIENCE_S) == ["a"]
    q.mark_ready("b", FIRST_PATIENCE_S + 4)
    # the patience follows the boots seen: 3 x the slowest, never under the minimum
    assert q.patience() == max(MIN_PATIENCE_S, PATIENCE_FACTOR * 4)
    q.mark_ready("a", FIRST_PATIENCE_S + 30)  # late, but ready: it counts
    assert q.patience() == PATIENCE_FACTOR * (FIRST_PATIENCE_S + 30)
    assert q.take(FIRST_PATIENCE_S + 31, room) == ["c"] and q.counts(FIRST_PATIENCE_S + 31) == (2, 1, 0)


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@pytest.fixture
def spinner(tmp_path: Path):
    """A real process that keeps one core busy, with its pid in a pid file (as QEMU's are)."""
    p = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    pidfile = tmp_path / "spin.pid"
    pidfile.write_text(str(p.pid))
    try:
        yield str(pidfile)
    finally:
        p.kill()
        p.wait()


def test_the_local_pool_is_the_cores_less_what_the_lab_s_guests_take(spinner: str, tmp_path: Path) -> None:
    guests = GuestCpu({"busy": spinner, "gone": str(tmp_path / "none.pid")})
    room = local_room(4, guests)
    assert room("machine", 0) == 4  # nothing measured yet: every core
    pid = int(Path(spinner).read_text())
    before, t0 = cpu_seconds(pid), time.monotonic()
    guests.sample(["busy", "gone"])
    time.sleep(1.0)
    rate = guests.sample(["busy", "gone"])
    expected = (cpu_seconds(pid) - before) / (time.monotonic() - t0)
    # what the process really got (less than a core when the machine is busy), as /proc says
    assert rate > 0.05 and abs(rate - expected) < 0.25, (rate, expected)
    assert room("machine", 0) in (3, 4) and room("machine", 2) == room("machine", 0) - 2
    # never fewer than one booting at a time, never more than two per core
    assert local_room(1, guests)("machine", 0) == 1
    busy = GuestCpu({})
    busy.rate = 10.0
    assert local_room(2, busy)("machine", 0) == 1 and local_room(2, busy)("machine", 1) == 0
    assert local_room(2, GuestCpu({}))("machine", 3) == 0
