"""Snapshots over SSH benchmark (root, QEMU, sshd, the demo guest image built by `make guest`).

Publishes a 2-VM app on two hosts reached over SSH (`--transport ssh`: the path cloud hosts
take), each VM on a 64 MiB base image of random data with a little written on top, snapshots it
twice without changes in between, then publishes the first snapshot onto SSH hosts. Prints:
  - bytes brought from the hosts by the first and by the second snapshot; second / first <= 1 %
  - the rate at which the first snapshot's layers came over SSH (fetch + sha256 check), against
    a plain SFTP get of the same files from the same hosts (in parallel, as ravel does) in this run
  - `publish --from` onto SSH hosts: the chains sent (MiB) and the time, and what publishing
    again sends (nothing)
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ravel.paths import paths  # noqa: E402
from ravel.providers import get_provider  # noqa: E402
from ravel.providers.base import Host  # noqa: E402
from ravel.events import Event  # noqa: E402
from ravel.run.lab import Lab  # noqa: E402
from ravel.state import State  # noqa: E402
from ravel.snapshot import take as snapshot_mod  # noqa: E402
from ravel.snapshot.fetch import HostFile, host_files  # noqa: E402

import snapshot_bench  # noqa: E402  (this directory: its lab blueprint and guest writer)
from snapshot_bench import ravel  # noqa: E402

APP = f"sshbench{os.getpid()}"
RESTORED = f"{APP}-r"
VMS = ("v1", "v2")


def blueprint(home: Path) -> Path:
    return snapshot_bench.blueprint(home, "sshbench", VMS, "10.44.0")


def guest_write(home: str, vm: str) -> None:
    snapshot_bench.guest_write(home, vm, APP)


def snapshot_timed(home: Path, name: str) -> tuple[dict, float, dict[str, HostFile]]:
    """Take a snapshot in this process; returns its result, the seconds from the end of the
    pause to the last layer fetched, and where each layer of the snapshot is on its host."""
    stamps: list[tuple[float, Event]] = []
    where: dict[str, HostFile] = {}
    real = snapshot_mod.brought_here

    def watched(files, reports, *args, **kw):
        where.update({sha: f for sha, f in host_files(reports).items() if sha in files})
        return real(files, reports, *args, **kw)

    lab = Lab(paths({"RAVEL_HOME": str(home)}), emit=lambda e: stamps.append((time.monotonic(), e)))
    snapshot_mod.brought_here = watched
    try:
        r = lab.snapshot(APP, name)
    finally:
        snapshot_mod.brought_here = real
        lab.close()
    paused = next(t for t, e in stamps if e.stage == "snapshot")
    fetched = [t for t, e in stamps if e.stage == "fetch"]
    return r.__dict__, (max(fetched) - paused) if fetched else 0.0, where


def plain_gets(home: Path, files: list[HostFile]) -> float:
    """Seconds for a bare paramiko SFTP get of `files`, one connection per host, the hosts in
    parallel (ravel's fetch without the sha256 check, the store, or files of one host at once)."""
    p = paths({"RAVEL_HOME": str(home)})
    st = State(p.state)
    provider = get_provider("local", p)
    try:
        hosts = {r.name: r for r in st.hosts(APP)}
    finally:
        st.close()
    out = home / "plain"
    out.mkdir()
    by_host: dict[str, list[str]] = {}
    for f in files:
        by_host.setdefault(f.host, []).append(f.path)

    def one_host(name: str) -> None:
        rec = hosts[name]
        tr = provider.transport(Host(APP, rec.name, rec.ref, rec.address or "", "", "", rec.extra["host"]))
        try:
            tr.run(["true"])  # connected before the clock runs, as ravel's transports are
            barrier.wait()
            # paramiko's own get, one file after another: the bare copy, nothing of ravel's
            with tr._session_sftp() as sftp:
                for i, f in enumerate(by_host[name]):
                    sftp.get(f, str(out / f"{name}-{i}"))
        finally:
            tr.close()

    barrier = threading.Barrier(len(by_host) + 1)
    threads = [threading.Thread(target=one_host, args=(n,)) for n in by_host]
    for th in threads:
        th.start()
    barrier.wait(timeout=60)
    t = time.monotonic()
    for th in threads:
        th.join(600)
    took = time.monotonic() - t
    shutil.rmtree(out)
    return took


def main() -> None:
    if os.geteuid() != 0:
        sys.exit("the benchmark needs root (network namespaces)")
    home = Path(tempfile.mkdtemp(prefix="ravel-sshbench-"))
    try:
        bp = blueprint(home)
        ravel(str(home), "publish", str(bp), "--name", APP, "--transport", "ssh", "--wait", "--timeout", "300")
        for vm in VMS:
            guest_write(str(home), vm)
        first, fetch_s, where = snapshot_timed(home, "b1")
        second, _, _ = snapshot_timed(home, "b2")
        # the better of two: paramiko's unbounded read-ahead now and then crawls for a whole
        # run, and a baseline that crawled would flatter ravel
        plain_s = min(plain_gets(home, list(where.values())) for _ in range(2))
        plain_bytes = sum(f.size for f in where.values())
        ravel(str(home), "destroy", APP, "--yes")
        t = time.monotonic()
        p = ravel(str(home), "publish", "--from", "b1", "--name", RESTORED, "--transport", "ssh", "--wait",
                  "--timeout", "300")
        publish_s = time.monotonic() - t
        sent = [int(n) for n in re.findall(r"sending \S+(?: \(layer \d+ of \d+\))? \((\d+) MiB\)", p.stderr)]
        again = ravel(str(home), "publish", "--from", "b1", "--name", RESTORED, "--transport", "ssh")
        resent = again.stderr.count("sending ")
    finally:
        for app in (APP, RESTORED):
            subprocess.run([sys.executable, "-m", "ravel", "destroy", app, "--yes"], capture_output=True, cwd=ROOT,
                           env=dict(os.environ, RAVEL_HOME=str(home)), timeout=300)
        shutil.rmtree(home, ignore_errors=True)

    ratio = second["bytes_fetched"] / max(first["bytes_fetched"], 1)
    print(f"first snapshot brought {first['bytes_fetched'] / 2**20:.1f} MiB over SSH ({first['layers_fetched']} "
          f"layers of {len(where)}); second (unchanged app) {second['bytes_fetched']} bytes = {ratio * 100:.3f} %"
          f"   target <= 1 %   {'ok' if ratio <= 0.01 else 'MISSED'}")
    rate = first["bytes_fetched"] / fetch_s / 1e6 if fetch_s else float("nan")
    base = plain_bytes / plain_s / 1e6
    print(f"layers over SSH (fetch + sha256, 2 hosts in parallel): {rate:.0f} MB/s; plain SFTP get of the same "
          f"files hosts in parallel: {base:.0f} MB/s (ratio {rate / base:.2f})")
    print(f"publish --from onto SSH hosts: sent {sum(sent)} MiB in {len(sent)} files, {publish_s:.1f} s until "
          f"every VM was ready; publishing again sent {resent} files")


if __name__ == "__main__":
    main()
