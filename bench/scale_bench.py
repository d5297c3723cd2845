"""Scale benchmark (issue 14): `ravel publish --wait` of 10, 25 and 50 busybox guests on 2, 5 and
10 local hosts, against the same guests started by plain QEMU command lines in the same waves.

For each size it prints the seconds until every guest is ready and the resident memory per
guest's QEMU (VmRSS), for ravel and for plain QEMU, measured in this run on this machine. Plain
QEMU boots the same kernel and initrd with the same machine, CPU model (ravel's TCG model),
accelerator, memory, vCPUs and virtio NIC, whose DHCP QEMU's own user network answers
(restricted: nothing leaves), but no namespaces, bridges, dnsmasq, readiness checks or host
runtime: its guests are ready when their console prints RAVEL-READY (after their lease, as in
ravel), and it starts them through the same queue
(ravel/run/waves.py: as many booting at once as there are cores the started guests leave).
Target: ravel / plain <= 1.2 at 50 guests.

Run as root after `make setup`, under flock when the machine is shared:
    flock /work/tmp/heavy.lock .venv/bin/python bench/scale_bench.py [--sizes 10,25,50]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ravel.render.qemu import TCG_CPU_MODEL  # noqa: E402
from ravel.run.waves import BootQueue, GuestCpu, local_room  # noqa: E402

GUEST = ROOT / ".cache" / "guest"
TARGET = 1.2
TIMEOUT_S = 900.0


def blueprint(n: int) -> str:
    text = (ROOT / "blueprints" / "scale-50.yaml").read_text()
    text = text.replace("count: 50", f"count: {n}").replace("../.cache/guest", str(GUEST))
    return text


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def qemu_pids(app: str) -> list[int]:
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if f",process=ravel-{app}-".encode() in (d / "cmdline").read_bytes():
                    out.append(int(d.name))
            except OSError:
                pass
    return out


def through_ravel(work: Path, n: int) -> tuple[float, float]:
    app = f"sb{os.getpid()}n{n}"
    bp = work / f"scale{n}.yaml"
    bp.write_text(blueprint(n))
    env = dict(os.environ, RAVEL_HOME=str(work / "home"))
    run = lambda *a: subprocess.run([sys.executable, "-m", "ravel", *a], capture_output=True, text=True, env=env,  # noqa: E731
                                    cwd=ROOT, timeout=TIMEOUT_S + 60, stdin=subprocess.DEVNULL)
    try:
        t = time.monotonic()
        p = run("publish", str(bp), "--name", app, "--wait", "--timeout", str(TIMEOUT_S))
        took = time.monotonic() - t
        if p.returncode != 0:
            sys.exit(f"ravel publish of {n} guests failed:\n{p.stderr[-3000:]}")
        pids = qemu_pids(app)
        assert len(pids) == n, (len(pids), n)
        rss = sum(rss_mib(pid) for pid in pids) / n
    finally:
        run("destroy", app, "--yes")
    return took, rss


def devices(work: Path, vm: str) -> list[str]:
    """What ravel gives every VM besides its NIC: the guest agent's virtio-serial channel, QMP
    and a VNC console, each on a unix socket (render/qemu.py)."""
    return ["-device", "virtio-serial-pci,id=vser0",
            "-chardev", f"socket,id=qga0,path={work}/{vm}.qga,server=on,wait=off",
            "-device", "virtserialport,bus=vser0.0,chardev=qga0,name=org.qemu.guest_agent.0",
            "-qmp", f"unix:{work}/{vm}.qmp,server=on,wait=off", "-vnc", f"unix:{work}/{vm}.vnc"]


def plain_qemu(work: Path, n: int, extra: bool = True) -> tuple[float, float]:
    """The same guests, started by hand in the same queue; ready when RAVEL-READY shows."""
    names = [f"vm-{i}" for i in range(1, n + 1)]
    pidfile = {vm: str(work / f"{vm}.pid") for vm in names}
    log = {vm: work / f"{vm}.log" for vm in names}
    queue = BootQueue(list(names), {vm: "machine" for vm in names})
    guests = GuestCpu(pidfile)
    room = local_room(len(os.sched_getaffinity(0)), guests)
    t = time.monotonic()
    try:
        while queue.order or len(queue.ready) < n:
            now = time.monotonic()
            if now - t > TIMEOUT_S:
                sys.exit(f"plain QEMU: {n - len(queue.ready)} guests not ready after {TIMEOUT_S:.0f} s")
            for vm in queue.started:
                if vm not in queue.ready and log[vm].exists() and b"RAVEL-READY" in log[vm].read_bytes():
                    queue.mark_ready(vm, now)
            guests.sample(list(queue.ready))
            for vm in queue.take(now, room):
                subprocess.run([
                    "qemu-system-x86_64", "-name", vm, "-nodefaults", "-no-user-config", "-display", "none",
                    "-machine", "q35", "-accel", "tcg,thread=multi,tb-size=64", "-cpu", TCG_CPU_MODEL, "-smp", "1",
                    "-m", "128M", "-kernel", str(GUEST / "vmlinuz"), "-initrd", str(GUEST / "initrd.img"),
                    # the same virtio NIC asking DHCP as ravel's guests do; QEMU's user network
                    # answers it, restricted: nothing leaves this process
                    "-netdev", "user,id=n0,restrict=on", "-device", "virtio-net-pci,netdev=n0",
                    "-append", f"console=ttyS0 quiet ravel.name={vm}", "-serial", f"file:{log[vm]}",
                    *(devices(work, vm) if extra else []),
                    "-pidfile", pidfile[vm], "-daemonize"], check=True, timeout=60,
                    stderr=subprocess.DEVNULL)  # TCG lists the CPU model's features it lacks, per guest
            time.sleep(0.1)
        took = time.monotonic() - t
        rss = sum(rss_mib(int(Path(pidfile[vm]).read_text())) for vm in names) / n
    finally:
        for vm in names:
            try:
                os.kill(int(Path(pidfile[vm]).read_text()), signal.SIGKILL)
            except (OSError, ValueError):
                pass
    return took, rss


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="10,25,50")
    parser.add_argument("--plain-only", action="store_true",
                        help="time plain QEMU alone, with and without ravel's other devices")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("the scale benchmark needs root (network namespaces)")
    rows = []
    with tempfile.TemporaryDirectory(prefix="ravel-scale-", dir=ROOT / ".cache") as tmp:
        for n in (int(x) for x in args.sizes.split(",")):
            work = Path(tmp) / f"n{n}"
            (work / "plain").mkdir(parents=True)
            if args.plain_only:
                bare, _ = plain_qemu(work / "plain", n, extra=False)
                full, _ = plain_qemu(work / "plain", n)
                print(json.dumps({"guests": n, "plain_nic_only_s": round(bare, 1), "plain_all_devices_s": round(full, 1)}),
                      flush=True)
                continue
            r_s, r_rss = through_ravel(work, n)
            p_s, p_rss = plain_qemu(work / "plain", n)
            rows.append((n, r_s, p_s, r_rss, p_rss))
            print(json.dumps({"guests": n, "ravel_s": round(r_s, 1), "plain_s": round(p_s, 1),
                              "ravel_rss_mib": round(r_rss, 1), "plain_rss_mib": round(p_rss, 1)}), flush=True)
    print(f"{'guests':>6}  {'ravel s':>8}  {'plain s':>8}  {'ratio':>6}  {'ravel MiB/VM':>12}  {'plain MiB/VM':>12}")
    for n, r_s, p_s, r_rss, p_rss in rows:
        print(f"{n:>6}  {r_s:>8.1f}  {p_s:>8.1f}  {r_s / p_s:>6.2f}  {r_rss:>12.1f}  {p_rss:>12.1f}")
    last = [r for r in rows if r[0] == 50]
    if last:
        ratio = last[0][1] / last[0][2]
        print(f"target: ravel / plain <= {TARGET} at 50 guests: {ratio:.2f} "
              f"{'ok' if ratio <= TARGET else 'MISSED'}")


if __name__ == "__main__":
    main()
