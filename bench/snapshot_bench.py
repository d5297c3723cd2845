"""Snapshot benchmark (root, QEMU, the demo guest image built by `make guest`).

Publishes a 4-VM app (each VM on a 64 MiB base image of random data, with a little written on
top), snapshots it twice without changes in between, then restores the first snapshot from the
local store. Prints, each against its target:
  - the pause window of the 4-VM app (first pause to last resume, across hosts)  <= 0.3 s
  - bytes stored by the first and the second snapshot; second / first             <= 1 %
  - restore throughput from the local store (fetch + sha256 + rebase)             >= 200 MB/s,
    with a plain file copy of the same layers measured in this run as the baseline
  - `publish --from` a `--memory` snapshot until every guest answers on its console (the VMs
    resume), against `publish --from` the disk-only snapshot of the same app (the VMs boot)
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from ravel.paths import paths  # noqa: E402
from ravel.snapshot.restore import restore  # noqa: E402

APP = f"snapbench{os.getpid()}"
GUEST = ROOT / ".cache" / "guest"
BASE_MIB = 64
VMS = ("v1", "v2", "v3", "v4")


def ravel(home: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, RAVEL_HOME=home)
    p = subprocess.run([sys.executable, "-m", "ravel", *args], capture_output=True, text=True, env=env,
                       cwd=ROOT, timeout=600, stdin=subprocess.DEVNULL)
    if p.returncode != 0:
        sys.exit(f"ravel {' '.join(args)} failed ({p.returncode}):\n{p.stdout}\n{p.stderr}")
    return p


def base_image(path: Path) -> None:
    raw = path.with_suffix(".raw")
    with open(raw, "wb") as f:
        for _ in range(BASE_MIB):
            f.write(os.urandom(1 << 20))
    subprocess.run(["qemu-img", "convert", "-q", "-f", "raw", "-O", "qcow2", str(raw), str(path)], check=True)
    raw.unlink()


def blueprint(home: Path, name: str = "snapbench", vms: tuple[str, ...] = VMS, net: str = "10.42.0") -> Path:
    """A lab of `vms`, each on its own random base image (so its layers are real bytes), with v1
    and v2 on different hosts."""
    entries = ""
    for i, vm in enumerate(vms):
        img = home / f"{vm}-base.qcow2"
        base_image(img)
        entries += f"  {vm}:\n    disks: [{{image: {img}}}]\n    nics: [{{network: back, ip: {net}.{11 + i}}}]\n"
    bp = home / "bench.yaml"
    bp.write_text(f"""name: {name}
networks:
  back: {{subnet: {net}.0/24}}
defaults:
  memory: 160MiB
  boot: {{kernel: {GUEST}/vmlinuz, initrd: {GUEST}/initrd.img, cmdline: console=ttyS0 quiet}}
vms:
{entries}placement:
  host_types: [local-small]
  anti_affinity: [[v1, v2]]
""")
    return bp


def guest_write(home: str, vm: str, app: str = APP) -> None:
    sys.path.insert(0, str(ROOT / "tests" / "e2e"))
    from guestlib import Console

    st = {v["name"]: v for v in json.loads(ravel(home, "status", app, "--json").stdout)[app]}[vm]
    with Console(st["console"], log=st["log"]) as con:
        con.check("dd if=/dev/urandom of=/dev/vda bs=1M count=2 conv=fsync 2>/dev/null", timeout=60)


def publish_until_answering(home: str, snap: str) -> float:
    """Seconds from `publish --from SNAP` until every guest answers a command on its console
    (the app is destroyed afterwards)."""
    sys.path.insert(0, str(ROOT / "tests" / "e2e"))
    from guestlib import Console

    app = f"{APP}-{snap}"
    t = time.monotonic()
    ravel(home, "publish", "--from", snap, "--name", app, "--wait", "--timeout", "300")
    for v in json.loads(ravel(home, "status", app, "--json").stdout)[app]:
        with Console(v["console"], log=v["log"]) as con:
            con.check("true", timeout=120)
    took = time.monotonic() - t
    ravel(home, "destroy", app, "--yes")
    return took


def verdict(ok: bool) -> str:
    return "ok" if ok else "MISSED"


def main() -> None:
    if os.geteuid() != 0:
        sys.exit("the snapshot benchmark needs root (network namespaces)")
    home = Path(tempfile.mkdtemp(prefix="ravel-snapbench-"))
    try:
        bp = blueprint(home)
        ravel(str(home), "publish", str(bp), "--name", APP, "--wait", "--timeout", "300")
        for vm in VMS:
            guest_write(str(home), vm)
        first = json.loads(ravel(str(home), "snapshot", APP, "--name", "b1", "--json").stdout)
        second = json.loads(ravel(str(home), "snapshot", APP, "--name", "b2", "--json").stdout)
        pauses = [first["pause_s"], second["pause_s"]]
        # restore throughput (below): what `publish --from b1` does before it creates anything
        layers = [home / "data" / "store" / "layers" / f for f in os.listdir(home / "data" / "store" / "layers")]
        total = sum(f.stat().st_size for f in layers)
        with_memory = json.loads(ravel(str(home), "snapshot", APP, "--memory", "--name", "m1", "--json").stdout)
        ravel(str(home), "destroy", APP, "--yes")

        copy_dir = home / "copy"
        copy_dir.mkdir()
        t = time.monotonic()
        for f in layers:
            shutil.copyfile(f, copy_dir / f.name)
            with open(copy_dir / f.name, "rb") as fh:
                os.fsync(fh.fileno())
        copy_s = time.monotonic() - t
        shutil.rmtree(copy_dir)
        t = time.monotonic()
        restore(paths({"RAVEL_HOME": str(home)}), "b1")
        restore_s = time.monotonic() - t
        resume_s = publish_until_answering(str(home), "m1")
        boot_s = publish_until_answering(str(home), "b1")
    finally:
        for app in (APP, f"{APP}-m1", f"{APP}-b1"):
            subprocess.run([sys.executable, "-m", "ravel", "destroy", app, "--yes"], capture_output=True, cwd=ROOT,
                           env=dict(os.environ, RAVEL_HOME=str(home)), timeout=300)
        shutil.rmtree(home, ignore_errors=True)

    ratio = second["bytes_stored"] / first["bytes_stored"]
    rate = total / restore_s / 1e6
    base = total / copy_s / 1e6
    print(f"pause window, 4 VMs on {len(first['host_pause_s'])} hosts: {pauses[0] * 1000:.0f} ms "
          f"(second snapshot {pauses[1] * 1000:.0f} ms)   target <= 300 ms   {verdict(max(pauses) <= 0.3)}")
    print(f"first snapshot stored {first['bytes_stored'] / 2**20:.1f} MiB; second (unchanged app) "
          f"{second['bytes_stored'] / 1024:.1f} KiB = {ratio * 100:.3f} %   target <= 1 %   {verdict(ratio <= 0.01)}")
    print(f"restore from the local store: {total / 2**20:.0f} MiB in {restore_s:.2f} s = {rate:.0f} MB/s "
          f"(plain copy of the same layers: {base:.0f} MB/s, ratio {rate / base:.2f})   target >= 200 MB/s   "
          f"{verdict(rate >= 200)}")
    mem_mib = (with_memory["bytes_total"] - first["bytes_total"]) / 2**20
    print(f"publish --from until all 4 guests answer: resumed from memory {resume_s:.1f} s, booted from the "
          f"disk snapshot {boot_s:.1f} s (ratio {resume_s / boot_s:.2f}; memory states {mem_mib:.0f} MiB)")


if __name__ == "__main__":
    main()
