"""The host runtime's line protocol (`ravel-host snapshot`) over every transport that streams:
a namespace host (`ip netns exec` pipe) and an SSH host (a channel to a real sshd), made by the
local provider as `ravel publish` makes them. The command here is a small script speaking the
same protocol: a JSON request, JSON lines back, words in between."""

from __future__ import annotations

import time

import pytest
from tests.contract.test_transport import lab, t  # noqa: F401 - the same two hosts, one per transport

from ravel.transport.hostrun import HostRun
from ravel.transport.hostctl import HostRuntime

SCRIPT = r"""
import json, sys
req = json.loads(sys.stdin.readline())
if req.get("fail"):
    sys.stderr.write("preparing went wrong\nno QMP socket at /x\n")
    sys.exit(3)
print(json.dumps({"ready": True, "echo": req["tag"]}), flush=True)
word = sys.stdin.readline().strip()
if word == "slow":
    import time; time.sleep(3)
print(json.dumps({"got": word, "big": "x" * 200000}), flush=True)
"""


@pytest.fixture
def runtime(t, tmp_path):  # noqa: F811
    script = tmp_path / "proto.py"
    script.write_text(SCRIPT)
    remote = f"/tmp/ravel-hoststream-{time.monotonic_ns()}.py"
    t.put(script, remote, 0o644)
    yield HostRuntime(t, remote)
    t.run(["rm", "-f", remote], check=False)


def test_request_ready_word_report(runtime):
    run = HostRun(runtime.t.host, runtime, {"tag": "s1"})
    try:
        assert run.next(0, 30) == {"ready": True, "echo": "s1"}
        run.send("go")
        report = run.next(1, 30)
        assert report["got"] == "go" and len(report["big"]) == 200000  # a long line arrives whole
        assert run.next(2, 30) == {"error": "host runtime exited: no output"}
    finally:
        run.finish()


def test_a_command_that_fails_says_why(runtime):
    run = HostRun(runtime.t.host, runtime, {"tag": "s1", "fail": True})
    try:
        assert run.next(0, 30) == {"error": "host runtime exited: no QMP socket at /x"}
    finally:
        run.finish()


def test_no_answer_is_bounded(runtime):
    run = HostRun(runtime.t.host, runtime, {"tag": "s1"})
    try:
        assert run.next(0, 30)["ready"]
        run.send("slow")
        started = time.monotonic()
        assert run.next(1, 0.5) == {"error": "no answer within 0 s"}
        assert time.monotonic() - started < 5
    finally:
        run.finish()
