"""`ravel-host boot` (host/boot.py), the real process over pipes: it reports readiness of the
guests it is told to watch, takes new checks and applies while it runs, answers an apply while
a slow check is still waiting, and ends when its stdin ends."""

from __future__ import annotations

import json
import select
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import pytest

ROOT = Path(__file__).resolve().parents[2]


class Boot:
    def __init__(self, request: dict[str, Any]) -> None:
        self.p = subprocess.Popen([sys.executable, "-m", "ravel.host", "boot"], cwd=ROOT, stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.send(request)

    def send(self, doc: Any) -> None:
        assert self.p.stdin is not None
        self.p.stdin.write((json.dumps(doc) + "\n").encode())
        self.p.stdin.flush()

    def until(self, pred: Callable[[dict[str, Any]], bool], timeout: float = 10.0) -> dict[str, Any]:
        assert self.p.stdout is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            ready, _, _ = select.select([self.p.stdout], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                break
            line = self.p.stdout.readline()
            if not line:
                break
            doc = json.loads(line)
            if pred(doc):
                return doc
        raise AssertionError(f"no such line within {timeout} s")

    def close(self) -> int:
        assert self.p.stdin is not None
        self.p.stdin.close()
        return self.p.wait(10)


@pytest.fixture
def boot(tmp_path: Path):  # type: ignore[no-untyped-def]
    made: list[Boot] = []

    def start(request: dict[str, Any]) -> Boot:
        made.append(Boot(request))
        return made[-1]

    yield start
    for b in made:
        if b.p.poll() is None:
            b.p.kill()
            b.p.wait()


def console(vm: str, log: Path) -> dict[str, Any]:
    return {"vm": vm, "kind": "console", "log": str(log), "pidfile": str(log) + ".pid"}


def test_reports_readiness_takes_new_checks_and_ends_with_stdin(boot, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    a, b = tmp_path / "a.log", tmp_path / "b.log"
    a.write_text("booting\n")
    b.write_text("")
    run = boot({"run_dir": str(tmp_path), "checks": [console("a", a)], "interval": 0.1})
    assert run.until(lambda d: "vms" in d)["vms"]["a"]["ready"] is False
    with a.open("a") as fh:
        fh.write("RAVEL-READY a\n")
    assert run.until(lambda d: d.get("vms", {}).get("a", {}).get("ready") is True)["vms"]["a"]["last_line"] == "RAVEL-READY a"
    run.send({"checks": [console("b", b)], "slow": 2})
    doc = run.until(lambda d: "b" in d.get("vms", {}))
    assert set(doc["vms"]) == {"b"} and doc["vms"]["b"]["ready"] is False
    # all it watches being ready does not end it: the next wave may come
    b.write_text("login: \n")
    run.until(lambda d: d.get("vms", {}).get("b", {}).get("ready") is True)
    time.sleep(0.3)
    assert run.p.poll() is None
    t = time.monotonic()
    assert run.close() == 0
    assert time.monotonic() - t < 3


def test_an_apply_is_answered_while_a_slow_check_waits(boot, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    # a port that accepts and never says a word: the ssh check waits out its banner bound (5 s)
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    try:
        port = silent.getsockname()[1]
        run = boot({"run_dir": str(tmp_path), "interval": 0.1,
                    "checks": [{"vm": "s", "kind": "ssh", "ip": "127.0.0.1", "port": port}]})
        time.sleep(0.5)  # the first check is under way
        t = time.monotonic()
        run.send({"apply": {"not": "a desired state"}})
        doc = run.until(lambda d: "applied" in d, timeout=10)
        took = time.monotonic() - t
        assert doc["applied"]["converged"] is False and doc["applied"]["errors"], doc
        assert took < 2.0, f"the apply waited {took:.1f} s for the check"
        t = time.monotonic()
        assert run.close() == 0
        assert time.monotonic() - t < 3, "its end waited for the check"
    finally:
        silent.close()


def test_a_bad_request_is_refused(boot, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    run = boot({"checks": [{"vm": "a"}]})
    assert "kind" in run.until(lambda d: True)["error"]
    assert run.p.wait(10) == 2
