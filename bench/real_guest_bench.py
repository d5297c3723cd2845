"""Real-guest benchmark: the Debian 12 test image (built by `make setup`, nothing of ravel's in it)
booted to SSH-ready through `ravel publish --wait`, against the same image booted by a plain
`qemu-system-x86_64` command line with the same CPU model, vCPUs, memory and accelerator and the
same cloud-init seed, timed to the same SSH banner (QEMU's user network forwarding a port on
127.0.0.1 to the guest's 22). Both start from a fresh overlay, so cloud-init's first boot is in
both. Measured in this run, one VM and then three at once.

Targets: one VM <= 1.10 x plain QEMU (ravel's own work must not show); three VMs <= 1.15 x.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
IMAGE = ROOT / ".cache" / "realguest" / "debian12-bios.qcow2"
MEMORY_MIB = 640
TIMEOUT_S = 900


def ravel(home: str, *args: str, timeout: float = TIMEOUT_S) -> float:
    t = time.monotonic()
    p = subprocess.run([sys.executable, "-m", "ravel", *args], capture_output=True, text=True, cwd=ROOT,
                       env=dict(os.environ, RAVEL_HOME=home), timeout=timeout, stdin=subprocess.DEVNULL)
    if p.returncode != 0:
        sys.exit(f"ravel {' '.join(args)} failed ({p.returncode}):\n{p.stdout}\n{p.stderr}")
    return time.monotonic() - t


def blueprint(app: str, n: int) -> str:
    vms = "".join(f"  g{i}:\n    disks: [{{image: {IMAGE}}}]\n    nics: [{{network: lan}}]\n" for i in range(n))
    return textwrap.dedent(f"""\
        name: {app}
        networks:
          lan: {{subnet: 10.93.0.0/24, gateway: 10.93.0.1, dhcp: true, dns: true}}
        defaults: {{memory: {MEMORY_MIB}MiB, cpus: 1, cloud_init: true}}
        vms:
        """) + vms


def through_ravel(home: str, n: int, keep: Path) -> tuple[float, list[tuple[str, str]]]:
    """Seconds until `ravel publish --wait` returns; the seeds and MACs it used (copied to `keep`)."""
    app = f"rgb{os.getpid() % 10000}n{n}"
    bp = Path(home) / f"{app}.yaml"
    bp.write_text(blueprint(app, n))
    took = ravel(home, "publish", str(bp), "--wait", "--timeout", str(TIMEOUT_S))
    seeds = []
    status = json.loads(subprocess.run([sys.executable, "-m", "ravel", "status", app, "--json"], capture_output=True,
                                       text=True, cwd=ROOT, env=dict(os.environ, RAVEL_HOME=home)).stdout)[app]
    for v in status:
        seed = next((Path(home) / "data" / "apps" / app / "seeds").glob(f"{v['name']}-*.iso"))
        copy = keep / f"{app}-{v['name']}.iso"
        shutil.copyfile(seed, copy)
        seeds.append((str(copy), v["macs"][0]))
    ravel(home, "destroy", app, "--yes")
    return took, seeds


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def banner(port: int, deadline: float) -> None:
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                s.settimeout(2)
                if s.recv(64).startswith(b"SSH-"):
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise SystemExit("plain QEMU: no SSH banner in time")


def plain_qemu(work: Path, seeds: list[tuple[str, str]]) -> float:
    """Seconds until every guest's SSH banner, each QEMU started like ravel starts one (TCG, -cpu
    max, same vCPUs and memory), on a fresh overlay, with the same seed and MAC."""
    procs, ports = [], []
    started = time.monotonic()
    try:
        for i, (seed, mac) in enumerate(seeds):
            overlay = work / f"plain{i}.qcow2"
            overlay.unlink(missing_ok=True)
            subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(IMAGE), "-F", "qcow2", str(overlay)],
                           check=True)
            port = free_port()
            ports.append(port)
            procs.append(subprocess.Popen([
                "qemu-system-x86_64", "-nodefaults", "-display", "none", "-machine", "q35",
                "-accel", "tcg,thread=multi,tb-size=64", "-cpu", "max", "-smp", "1", "-m", f"{MEMORY_MIB}M",
                "-drive", f"file={overlay},if=none,id=d0,format=qcow2,cache=writeback,discard=unmap",
                "-device", "virtio-blk-pci,drive=d0",
                "-drive", f"file={seed},if=none,id=cd0,media=cdrom,readonly=on,format=raw",
                "-device", "ide-cd,drive=cd0,bus=ide.0",
                "-netdev", f"user,id=n0,hostfwd=tcp:127.0.0.1:{port}-:22", "-device", f"virtio-net-pci,netdev=n0,mac={mac}",
                "-serial", "null"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        deadline = started + TIMEOUT_S
        for port in ports:
            banner(port, deadline)
        return time.monotonic() - started
    finally:
        for p in procs:
            p.kill()
            p.wait(30)


def main() -> None:
    if not IMAGE.exists():
        sys.exit(f"{IMAGE} is missing: run `make setup`")
    with tempfile.TemporaryDirectory(prefix="ravel-rgbench-", dir=ROOT / ".cache") as tmp:
        home, work = Path(tmp) / "home", Path(tmp) / "work"
        home.mkdir()
        work.mkdir()
        rows = []
        # the base image's pages cached before either run, so neither pays for the first read
        subprocess.run(["cat", str(IMAGE)], stdout=subprocess.DEVNULL, check=True)
        for n, target in ((1, 1.10), (3, 1.15)):
            took, seeds = through_ravel(str(home), n, work)
            base = plain_qemu(work, seeds)
            rows.append((n, took, base, took / base, target))
        print(f"{'boot to SSH-ready (Debian 12, TCG)':40} {'ravel':>8} {'plain QEMU':>11} {'ratio':>7} {'target':>7}")
        ok = True
        for n, took, base, ratio, target in rows:
            met = ratio <= target
            ok &= met
            print(f"{f'{n} VM' + ('s at once' if n > 1 else ''):40} {took:7.1f}s {base:10.1f}s {ratio:7.2f} "
                  f"{'<= ' + str(target):>7}  {'ok' if met else 'MISSED'}")
        print("targets:", "all met" if ok else "NOT all met")


if __name__ == "__main__":
    main()
