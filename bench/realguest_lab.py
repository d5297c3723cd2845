"""A lab of the real Debian 12 guest (built by `make setup`: .cache/realguest/debian12-bios.qcow2,
stock Debian with cloud-init, nothing of ravel's in it) published through ravel, for the
benchmarks that measure inside guests (tcg_cpu_bench.py, memory_bench.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
IMAGE = ROOT / ".cache" / "realguest" / "debian12-bios.qcow2"


class Lab:
    def __init__(self, home: Path, app: str) -> None:
        self.home, self.app = home, app
        self.env = dict(os.environ, RAVEL_HOME=str(home))

    def ravel(self, *args: str, timeout: float = 1800, check: bool = True) -> subprocess.CompletedProcess[str]:
        p = subprocess.run([sys.executable, "-m", "ravel", *args], capture_output=True, text=True, cwd=ROOT,
                           env=self.env, timeout=timeout, stdin=subprocess.DEVNULL)
        if check and p.returncode != 0:
            sys.exit(f"ravel {' '.join(args)} failed ({p.returncode}):\n{p.stdout}\n{p.stderr[-4000:]}")
        return p

    def publish(self, vms: dict[str, dict], memory_mib: int, extra: str = "") -> float:
        """Publish VMs (name -> extra keys) of the Debian image; seconds until all are ready."""
        lines = "".join(f"  {name}: {json.dumps(keys)}\n" for name, keys in vms.items())
        bp = self.home / f"{self.app}.yaml"
        self.home.mkdir(parents=True, exist_ok=True)
        bp.write_text(textwrap.dedent(f"""\
            name: {self.app}
            networks:
              lan: {{subnet: 10.94.0.0/24, gateway: 10.94.0.1, dhcp: true, dns: true}}
            defaults:
              memory: {memory_mib}MiB
              cpus: 1
              cloud_init: true
              disks: [{{image: {IMAGE}}}]
              nics: [{{network: lan}}]
            vms:
            """) + lines + extra)
        t = time.monotonic()
        self.ravel("publish", str(bp), "--wait", "--timeout", "1700")
        return time.monotonic() - t

    def sh(self, vm: str, command: str, timeout: float = 600) -> str:
        p = self.ravel("ssh", self.app, vm, "--", command, timeout=timeout, check=False)
        if p.returncode != 0:
            sys.exit(f"{vm}: `{command}` failed ({p.returncode}): {p.stderr[-2000:]}")
        return p.stdout

    def status(self) -> list[dict]:
        return json.loads(self.ravel("status", self.app, "--json").stdout)[self.app]

    def qemu_pid(self, vm: str) -> int:
        v = next(v for v in self.status() if v["name"] == vm)
        return int(v["pid"])

    def destroy(self) -> None:
        self.ravel("destroy", self.app, "--yes", check=False)
