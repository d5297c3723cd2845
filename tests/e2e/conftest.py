"""Shared pieces for end-to-end tests: the real CLI, guests' consoles, and leftover checks."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from guestlib import Console  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
GUEST = ROOT / ".cache" / "guest"


# the longest modules (real OS guests under TCG) start first, so under `-n 2 --dist loadfile`
# the rest of the suite runs beside them instead of after them
FIRST = ("test_real_guests.py", "test_iso_install.py", "test_guest_access_ssh.py")


def pytest_collection_modifyitems(items):
    for item in items:
        if "/e2e/" in str(item.fspath):
            item.add_marker(pytest.mark.e2e)
    items.sort(key=lambda item: 0 if Path(str(item.fspath)).name in FIRST else 1)


@pytest.fixture(scope="session", autouse=True)
def _need_root_and_image():
    if os.geteuid() != 0:
        pytest.fail("end-to-end tests need root (network namespaces, taps); run `make test` as root")
    # idempotent (about a second when the image is current): a changed guest/ source rebuilds it
    subprocess.run(["bash", str(ROOT / "guest" / "build.sh"), str(GUEST)], check=True, timeout=900)


@dataclass
class Ravel:
    """The CLI as a user runs it, against one RAVEL_HOME."""

    home: Path

    def env(self, **extra: str) -> dict[str, str]:
        return dict(os.environ, RAVEL_HOME=str(self.home), COLUMNS="200", **extra)

    def __call__(self, *args: str, check: bool = True, timeout: float = 300, **env: str) -> subprocess.CompletedProcess[str]:
        p = subprocess.run([sys.executable, "-m", "ravel", *args], capture_output=True, text=True,
                           timeout=timeout, env=self.env(**env), cwd=ROOT, stdin=subprocess.DEVNULL)
        assert "Traceback" not in p.stderr, p.stderr
        if check:
            assert p.returncode == 0, f"ravel {' '.join(args)} -> {p.returncode}\n{p.stdout}\n{p.stderr}"
        return p

    def popen(self, *args: str) -> subprocess.Popen[str]:
        return subprocess.Popen([sys.executable, "-m", "ravel", *args], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, env=self.env(), cwd=ROOT,
                                stdin=subprocess.DEVNULL)

    def status(self, app: str) -> dict[str, dict]:
        return {v["name"]: v for v in json.loads(self("status", app, "--json").stdout)[app]}

    def console(self, app: str, vm: str) -> Console:
        v = self.status(app)[vm]
        return Console(v["console"], log=v["log"])


def qemu_pids(app: str) -> dict[str, int]:
    """VM name -> pid of every QEMU process of `app` (they carry process=ravel-<app>-<vm>)."""
    out = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            cmd = (d / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        for part in cmd:
            m = re.match(rb".*,process=ravel-" + re.escape(app.encode()) + rb"-([a-z0-9-]+)$", part)
            if m:
                out[m.group(1).decode()] = int(d.name)
    return out


def namespaces() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return {l.split()[0] for l in out.splitlines() if l.strip()}


def leftovers(app: str, home: Path) -> list[str]:
    found = [f"namespace {ns}" for ns in namespaces() if ns.startswith(f"rv-{app}-")]
    found += [f"qemu {vm} pid {pid}" for vm, pid in qemu_pids(app).items()]
    for d in (home / "data" / "apps" / app,):
        if d.exists():
            found.append(f"directory {d}")
    found += [f"run dir {p}" for p in Path("/run/ravel").glob(f"*/{app}")]
    return found


def force_cleanup(app: str, home: Path) -> None:
    """Last resort after a failed test: end our processes by PID, drop our namespaces."""
    for pid in qemu_pids(app).values():
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    for ns in namespaces():
        if ns.startswith(f"rv-{app}-"):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def wait_until(pred, timeout: float, what: str, step: float = 0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(step)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def ready_count(log: str, vm: str) -> int:
    try:
        return Path(log).read_bytes().count(f"RAVEL-READY {vm}".encode())
    except FileNotFoundError:
        return 0
