"""`ravel run` and local lifetimes end to end: real QEMU guests (the busybox demo guest) in real
namespaces, through the CLI as a CI job runs it.

- `-- true`: exit 0, the app is gone and nothing is left behind;
- `-- sh -c 'exit 3'` with --snapshot-on-failure: exit 3, the named snapshot exists and
  publishes again, the app is gone;
- SIGTERM while COMMAND runs: COMMAND ends, the app is destroyed, exit 143;
- every JUnit report is valid against the JUnit XSD subset CI servers read;
- `--ttl 20s`: the app is destroyed 20-40 s after publish with no ravel command running;
  `ravel extend` pushes the expiry back.

One RAVEL_HOME for the module; every app is destroyed at the end with a check that nothing
(namespace, QEMU, reaper, run directory) is left, even when a test fails.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from conftest import GUEST, ROOT, Ravel, force_cleanup, leftovers, namespaces, qemu_pids, wait_until
from tests.jsonschemas import parsed
from tests.unit.junitcheck import problems

PID = os.getpid()
OK, FAIL, TERM, TTL, LONG, AGAIN = (f"{x}{PID}" for x in ("runok", "runfail", "runterm", "ttl", "ttlx", "again"))
APPS = (OK, FAIL, TERM, TTL, LONG, AGAIN)

BLUEPRINT = f"""\
name: runlab
networks:
  back: {{subnet: 10.62.0.0/24}}
vms:
  a:
    memory: 160MiB
    boot: {{kernel: {GUEST}/vmlinuz, initrd: {GUEST}/initrd.img, cmdline: console=ttyS0 quiet}}
    disks: [{{size: 32MiB}}]
    nics: [{{network: back, ip: 10.62.0.11}}]
placement:
  host_types: [local-small]
"""


def reapers(home: Path) -> list[int]:
    """Reaper processes of this RAVEL_HOME (by their command line, which names its state)."""
    found = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            cmd = (d / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"ravel.run.reaper" in cmd and any(str(home).encode() in part for part in cmd):
            found.append(int(d.name))
    return found


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    home = tmp_path_factory.mktemp("home")
    bp = home / "runlab.yaml"
    bp.write_text(BLUEPRINT)
    r = Ravel(home)
    try:
        yield r, bp
    finally:
        for app in APPS:
            r("destroy", app, "--yes", check=False)
        left = [x for app in APPS for x in leftovers(app, home)] + [f"reaper pid {p}" for p in reapers(home)]
        for pid in reapers(home):  # ours: started for this module's RAVEL_HOME
            os.kill(pid, signal.SIGKILL)
        for app in APPS:
            force_cleanup(app, home)
        assert not left, f"left behind: {left}"


def junit_cases(path: Path) -> dict[str, ET.Element]:
    assert problems(str(path)) == [], problems(str(path))
    return {c.get("name"): c for c in ET.parse(path).getroot().iter("testcase")}


def gone(r: Ravel, app: str) -> None:
    assert app not in r("list", "--json").stdout
    assert leftovers(app, r.home) == []
    for folder in ("ssh_config", "inventory", "known_guests"):
        assert not (r.home / "state" / folder / app).exists()


def test_run_true_passes_and_leaves_nothing(lab):
    r, bp = lab
    junit = r.home / "ok.xml"
    p = r("run", str(bp), "--name", OK, "--junit", str(junit), "--",
          "sh", "-c", 'test "$RAVEL_APP" = "$0" && grep -q "^# ravel ssh-config $0" "$RAVEL_SSH_CONFIG" '
                      '&& grep -q "ansible_ssh_common_args: -F $RAVEL_SSH_CONFIG" "$RAVEL_INVENTORY" && echo env-ok',
          OK, timeout=300, check=False)
    assert p.returncode == 0, p.stderr
    assert "env-ok" in p.stdout  # COMMAND's own output passes through on stdout
    gone(r, OK)
    cases = junit_cases(junit)
    assert list(cases) == ["publish", "ready", "command", "snapshot", "destroy"]
    assert all(cases[n].find("failure") is None and cases[n].find("error") is None for n in cases)
    assert cases["snapshot"].find("skipped").get("message") == "the run passed"
    assert float(cases["ready"].get("time")) > 0


def test_failing_command_is_snapshotted_and_its_status_passes_through(lab):
    r, bp = lab
    junit = r.home / "fail.xml"
    p = r("run", str(bp), "--name", FAIL, "--snapshot-on-failure", "--junit", str(junit), "--json", "--",
          "sh", "-c", "echo to-stderr; exit 3", timeout=300, check=False)
    assert p.returncode == 3, p.stderr
    m = re.search(rf"^  ravel publish --from ({FAIL}-failed-\d{{8}}-\d{{6}}) --wait$", p.stderr, re.MULTILINE)
    assert m, p.stderr
    snap = m.group(1)
    # --json: the run as one document on stdout (COMMAND's own stdout went to stderr)
    doc = parsed(p.stdout, "run")
    assert (doc["status"], doc["snapshot"], doc["publish_from"]) == (3, snap, m.group(0).strip())
    assert [(ph["name"], ph["outcome"]) for ph in doc["phases"]] == [
        ("publish", "passed"), ("ready", "passed"), ("command", "failed"), ("snapshot", "passed"),
        ("destroy", "passed")]
    assert "to-stderr" in p.stderr and doc["messages"] == []
    gone(r, FAIL)
    assert snap in r("snapshots", "--json").stdout
    cases = junit_cases(junit)
    assert cases["command"].find("failure").get("message") == "sh -c 'echo to-stderr; exit 3' exited with status 3"
    assert snap in cases["snapshot"].find("system-out").text
    # the exact line printed brings the failed lab back
    line = m.group(0).split()[1:]
    q = r(*line, "--name", AGAIN, "--timeout", "240", timeout=300)
    assert "all VMs ready" in q.stdout
    r("destroy", AGAIN, "--yes")


def test_sigterm_while_the_command_runs_destroys_and_exits_143(lab):
    r, bp = lab
    junit = r.home / "term.xml"
    marker = r.home / "command-started"
    proc = subprocess.Popen([sys.executable, "-m", "ravel", "run", str(bp), "--name", TERM, "--junit", str(junit),
                             "--", "sh", "-c", f"touch {marker}; exec sleep 600"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=r.env(), cwd=ROOT,
                            stdin=subprocess.DEVNULL)
    try:
        wait_until(lambda: marker.exists() or proc.poll() is not None, 240, "COMMAND to start")
        assert proc.poll() is None
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 143, err
    assert "Traceback" not in err
    gone(r, TERM)
    assert not [l for l in subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout.splitlines()
                if l.startswith("sleep 600")], "COMMAND outlived the run"
    cases = junit_cases(junit)
    assert cases["command"].find("error").get("message") == "interrupted by SIGTERM"
    assert cases["destroy"].find("error") is None and cases["destroy"].find("skipped") is None


def test_ttl_destroys_the_app_with_no_ravel_running_and_extend_pushes_it_back(lab):
    r, bp = lab
    started = time.monotonic()
    r("publish", str(bp), "--name", TTL, "--ttl", "20s", "--timeout", "240", timeout=300)
    r("publish", str(bp), "--name", LONG, "--ttl", "20s", "--timeout", "240", timeout=300)
    # the publishing CLI has exited; only the detached reapers act from here
    listed = r("list").stdout
    assert re.search(rf"{TTL} .* in \d+s \(destroy\)", listed), listed
    assert re.search(r"lifetime: expires in \d+s .*then destroy; reaper pid \d+", r("status", TTL).stdout)
    p = r("extend", LONG, "--ttl", "90s")
    assert re.search(r"expires in 1m (2|3)\ds", p.stdout), p.stdout
    doc = parsed(r("extend", LONG, "--ttl", "90s", "--json").stdout, "extend")
    assert doc["app"] == LONG and 80 <= doc["expiry"]["left_s"] <= 90 and doc["expiry"]["action"] == "destroy"
    expiry = {a["name"]: a["expiry"] for a in parsed(r("list", "--json").stdout, "list")}
    assert expiry[LONG]["left_s"] > 60  # (TTL may be gone already)
    wait_until(lambda: not namespaces_of(TTL) and not qemu_pids(TTL), 45, f"{TTL} to be destroyed")
    took = time.monotonic() - started
    assert 20 <= took <= 45, f"{TTL} destroyed after {took:.0f} s"
    assert TTL not in r("list", "--json").stdout
    gone(r, TTL)
    # LONG was due at the same time, but extended: still there
    assert qemu_pids(LONG) and LONG in r("list", "--json").stdout
    r("extend", LONG, "--ttl", "1s")
    wait_until(lambda: not namespaces_of(LONG) and not qemu_pids(LONG), 30, f"{LONG} to be destroyed")
    wait_until(lambda: LONG not in r("list", "--json").stdout, 10, f"{LONG} to leave the state")
    gone(r, LONG)
    wait_until(lambda: not reapers(r.home), 10, "the reapers to end")


def namespaces_of(app: str) -> set[str]:
    return {ns for ns in namespaces() if ns.startswith(f"rv-{app}-")}
