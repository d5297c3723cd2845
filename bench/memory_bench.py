"""Memory figures the planner uses, measured on the real Debian 12 guest published through ravel
(cloud-init, TCG) on this machine:

1. QEMU's own memory per VM (placement.QEMU_OVERHEAD_MIB["tcg"]): a QEMU's resident memory
   outside the guest's RAM block (/proc/PID/smaps: every mapping but the RAM), right after
   boot and again after CPU-bound work has filled its translation cache.
2. What a guest OS keeps for itself (reserve.CLOUD_HOST, a cloud host being such a Debian):
   the kernel's share (memory given - MemTotal) at two sizes, and what a booted Debian with
   sshd holds (MemTotal - MemAvailable).
3. A namespace host's own processes (reserve.NAMESPACE_HOST): dnsmasq and the host runtime.
4. KSM (ravel/plan/sharing.py, docs/capacity.md): ten guests on one host, the sum of their
   QEMUs' proportional set sizes (PSS: a page merged by KSM counts once, split between its
   users) N minutes after all are ready, with KSM on (ravel turns it on for that host) and
   without (each guest boots its own copy of the image, so the plan sees no shared image).

    flock /work/tmp/heavy.lock .venv/bin/python bench/memory_bench.py [--minutes 5] [--skip-ksm]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from realguest_lab import IMAGE, ROOT, Lab  # noqa: E402

KSM = Path("/sys/kernel/mm/ksm")
WORK = "f=/dev/shm/bench; head -c 100M /dev/zero > $f; sha256sum $f >/dev/null; rm $f; " \
       "i=0; while [ $i -lt 200000 ]; do i=$((i+1)); done; python3 -c 'import json, email, http.client'"


def smaps_split(pid: int, ram_mib: int) -> tuple[float, float]:
    """(guest RAM resident, everything else resident) in MiB: the RAM block is the mapping of
    the guest's memory size (rounded up to a page-aligned block)."""
    ram = other = 0
    size = 0
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        if re.match(r"^[0-9a-f]+-[0-9a-f]+ ", line):
            start, end = (int(x, 16) for x in line.split()[0].split("-"))
            size = (end - start) // (1 << 20)
        elif line.startswith("Rss:"):
            kb = int(line.split()[1])
            if ram_mib <= size <= ram_mib + 4:
                ram += kb
            else:
                other += kb
    return ram / 1024, other / 1024


def pss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1]) / 1024
    return 0.0


def meminfo_in(lab: Lab, vm: str) -> dict[str, int]:
    out = lab.sh(vm, "cat /proc/meminfo")
    return {k: int(v.split()[0]) // 1024 for k, v in (line.split(":", 1) for line in out.splitlines())}


def overhead_and_os(home: Path) -> dict:
    lab = Lab(home / "a", f"mem{os.getpid() % 10000}")
    sizes = {"small": 1024, "big": 4096}
    try:
        lab.publish({name: {"memory": f"{mib}MiB"} for name, mib in sizes.items()}, memory_mib=1024)
        time.sleep(20)  # cloud-init's last steps, sshd settled
        out: dict = {"vms": {}}
        for name, mib in sizes.items():
            pid = lab.qemu_pid(name)
            ram, other = smaps_split(pid, mib)
            info = meminfo_in(lab, name)
            lab.sh(name, WORK)
            ram2, other2 = smaps_split(pid, mib)
            out["vms"][name] = {
                "memory_mib": mib, "qemu_rss_outside_ram_boot_mib": round(other, 1),
                "qemu_rss_outside_ram_after_work_mib": round(other2, 1), "guest_ram_resident_mib": round(ram2, 1),
                "guest_memtotal_mib": info["MemTotal"], "kernel_keeps_mib": mib - info["MemTotal"],
                "guest_used_mib": info["MemTotal"] - info["MemAvailable"],
            }
        # the namespace host's own processes: all but the QEMUs in its network namespace
        ns = f"rv-{lab.app}-host-1"
        pids = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True).stdout.split()
        own = {}
        for pid in pids:
            try:
                comm = Path(f"/proc/{pid}/comm").read_text().strip()
                if comm.startswith("qemu"):
                    continue
                rss = next(int(x.split()[1]) for x in Path(f"/proc/{pid}/status").read_text().splitlines()
                           if x.startswith("VmRSS:"))
                own[f"{comm}[{pid}]"] = round(rss / 1024, 1)
            except (OSError, StopIteration):
                pass
        out["namespace_host_processes_mib"] = own
        return out
    finally:
        lab.destroy()


def ten_guests(home: Path, minutes: float, ksm_on: bool) -> dict:
    """Ten guests on one host; with KSM as ravel turns it on (one base image), or without: each
    guest boots its own copy of the image, so the plan sees ten images and KSM stays off."""
    lab = Lab(home, f"ksm{'on' if ksm_on else 'off'}{os.getpid() % 1000}")
    vms = {}
    for i in range(10):
        keys: dict = {}
        if not ksm_on:
            copy = home / f"debian-{i}.qcow2"
            home.mkdir(parents=True, exist_ok=True)
            subprocess.run(["cp", "--reflink=auto", str(IMAGE), str(copy)], check=True)
            keys = {"disks": [{"image": str(copy)}]}
        vms[f"g{i}"] = keys
    try:
        took = lab.publish(vms, memory_mib=512, extra="placement: {max_hosts: 1, cpu_overcommit: 8}\n")
        pids = [int(v["pid"]) for v in lab.status()]
        hosts = {v["host"] for v in lab.status()}
        samples = []
        start = time.monotonic()
        while True:
            elapsed = time.monotonic() - start
            samples.append({"minute": round(elapsed / 60, 1), "pss_sum_mib": round(sum(pss_mib(p) for p in pids)),
                            "ksm_pages_sharing": int((KSM / "pages_sharing").read_text()),
                            "ksm_run": (KSM / "run").read_text().strip()})
            print(json.dumps({"ksm": ksm_on, **samples[-1]}), flush=True)
            if elapsed >= minutes * 60:
                break
            time.sleep(min(60.0, minutes * 60 - elapsed))
        return {"ksm": ksm_on, "publish_s": round(took), "hosts": len(hosts), "samples": samples}
    finally:
        lab.destroy()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--minutes", type=float, default=5.0)
    parser.add_argument("--skip-ksm", action="store_true")
    parser.add_argument("--skip-overhead", action="store_true")
    parser.add_argument("--skip-on", action="store_true", help="only the lab without KSM")
    parser.add_argument("--skip-off", action="store_true", help="only the lab with KSM")
    args = parser.parse_args()
    if not IMAGE.exists():
        sys.exit(f"{IMAGE} is missing: run `make setup`")
    subprocess.run(["cat", str(IMAGE)], stdout=subprocess.DEVNULL, check=True)  # page cache warm
    with tempfile.TemporaryDirectory(prefix="ravel-membench-", dir=ROOT / ".cache") as tmp:
        if not args.skip_overhead:
            print(json.dumps(overhead_and_os(Path(tmp))), flush=True)
        if not args.skip_ksm:
            if not args.skip_off:
                off = ten_guests(Path(tmp) / "off", args.minutes, False)
            if not args.skip_on:
                on = ten_guests(Path(tmp) / "on", args.minutes, True)
            if args.skip_on or args.skip_off:
                return
            a, b = on["samples"][-1]["pss_sum_mib"], off["samples"][-1]["pss_sum_mib"]
            print(json.dumps({"ten_guests_pss_mib": {"ksm_on": a, "ksm_off": b}, "saving_mib": b - a,
                              "saving_per_extra_guest_mib": round((b - a) / 9, 1),
                              "after_minutes": args.minutes}), flush=True)


if __name__ == "__main__":
    main()
