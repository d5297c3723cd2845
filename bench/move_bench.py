"""What moving a stopped VM's disk between SSH hosts costs, measured in one run (needs root).

Two hosts of the local provider reached over SSH (a real sshd in each namespace). A qcow2 disk
with SIZE_MIB of data over a frozen layer is moved host-1 -> host-2 with ravel's move (streamed
through this machine, sha256 on the source, here and on the target, layer rebased, source removed), and
back. Baseline, in the same run: the same bytes with a bare SFTP `get` then `put` and nothing
checked. Prints MiB/s of both (medians of ROUNDS alternating rounds) and the ratio (the price of
verifying).

    .venv/bin/python bench/move_bench.py [SIZE_MIB]
"""

from __future__ import annotations

import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ravel.paths import paths
from ravel.providers.base import HostSpec
from ravel.providers.local import LocalProvider
from ravel.run.diskmove import move_disk


ROUNDS = 5


def main() -> None:
    size = int(sys.argv[1]) if len(sys.argv) > 1 else 64
    if os.geteuid() != 0:
        sys.exit("move_bench needs root (it makes network namespaces)")
    home = Path(tempfile.mkdtemp(prefix="ravel-mbench-"))
    provider = LocalProvider(paths({"RAVEL_HOME": str(home)}))
    app = f"mb{os.getpid()}"
    ts = []
    try:
        for i in (1, 2):
            h = provider.ensure_host(HostSpec(app, f"host-{i}", i, "local-small", transport="ssh"))
            ts.append(provider.transport(h))
        t1, t2 = ts
        d1, d2 = home / "data" / "host-1", home / "data" / "host-2"
        layer, disk = d1 / "layers" / "vm-disk0.s1.qcow2", d1 / "vm-disk0.qcow2"
        t1.run(["mkdir", "-p", str(layer.parent)], timeout=30)
        t1.run(["qemu-img", "create", "-q", "-f", "qcow2", str(layer), f"{2 * size}M"])
        t1.run(["qemu-io", "-c", f"write -P 0x11 0 {size // 2}M", str(layer)], timeout=120)
        t1.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(layer), "-F", "qcow2", str(disk)])
        t1.run(["qemu-io", "-c", f"write -P 0x22 {size // 2}M {size // 2}M", str(disk)], timeout=120)
        total = layer.stat().st_size + disk.stat().st_size

        # paramiko's own get and put on the transports' connections: the bare copy, nothing of ravel's
        scratch = home / "plain"
        t2.run(["mkdir", "-p", str(d2 / "plain")])

        def plain() -> None:
            with t1._session_sftp() as s1, t2._session_sftp() as s2:
                for f in (layer, disk):
                    s1.get(str(f), str(scratch))
                    s2.put(str(scratch), str(d2 / "plain" / f.name))
                    scratch.unlink()

        # rounds alternate the two, and the medians are compared: the machine's other load
        # then weighs on both alike
        moves, plains = [], []
        for _ in range(ROUNDS):
            started = time.perf_counter()
            there = move_disk(t1, str(disk), t2, str(d2 / "vm-disk0.qcow2"))
            moves.append(time.perf_counter() - started)
            back = move_disk(t2, str(d2 / "vm-disk0.qcow2"), t1, str(disk))
            assert there.bytes == back.bytes == total and disk.exists() and layer.exists()
            started = time.perf_counter()
            plain()
            plains.append(time.perf_counter() - started)
        moved_s, plain_s = statistics.median(moves), statistics.median(plains)

        mib = total / (1 << 20)
        print(f"disk + layer: {mib:.1f} MiB in 2 files, median of {ROUNDS} rounds")
        print(f"  ravel move (verified, rebased, source removed): {moved_s:6.2f} s  {mib / moved_s:7.1f} MiB/s")
        print(f"  bare SFTP get + put (baseline):                  {plain_s:6.2f} s  {mib / plain_s:7.1f} MiB/s")
        print(f"  ratio move / baseline: {moved_s / plain_s:.2f} x")
    finally:
        for t in ts:
            t.close()
        for i in (1, 2):
            provider.delete_host(app, f"host-{i}", i)
        provider.cleanup()
        shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()
