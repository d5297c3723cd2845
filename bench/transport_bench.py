"""Transport costs, measured in one run on one machine (needs root).

Two hosts of the local provider, one reached with `ip netns exec`, one over SSH (a real sshd in
its namespace). Prints the latency of one small command on each, SSH with its one kept
connection against a new connection per command (the baseline ravel avoids), and the time to
send the host runtime and a 16 MiB file with `put`.

    .venv/bin/python bench/transport_bench.py [ROUNDS]
"""

from __future__ import annotations

import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from ravel.paths import paths
from ravel.providers.base import HostSpec
from ravel.providers.local import LocalProvider
from ravel.transport.hostctl import bundle
from ravel.transport.ssh import SSHTransport


def per_call_ms(fn, rounds: int) -> tuple[float, float]:
    times = []
    for _ in range(rounds):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1000)
    return statistics.median(times), max(times)


def main() -> None:
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 30
    if os.geteuid() != 0:
        sys.exit("transport_bench needs root (it makes network namespaces)")
    home = Path(tempfile.mkdtemp(prefix="ravel-tbench-"))
    provider = LocalProvider(paths({"RAVEL_HOME": str(home)}))
    app = f"tb{os.getpid()}"
    try:
        netns_host = provider.ensure_host(HostSpec(app, "host-1", 1, "local-small", transport="netns"))
        ssh_host = provider.ensure_host(HostSpec(app, "host-2", 2, "local-small", transport="ssh"))
        netns, ssh = provider.transport(netns_host), provider.transport(ssh_host)
        ssh.run(["true"], timeout=30)  # connected once, as a publish does

        def fresh() -> None:
            t = SSHTransport.from_spec("host-2", ssh_host.extra["ssh"])
            t.run(["true"])
            t.close()

        rows = [("netns: ip netns exec true", per_call_ms(lambda: netns.run(["true"]), rounds)),
                ("ssh: true, kept connection", per_call_ms(lambda: ssh.run(["true"]), rounds)),
                ("ssh: true, new connection (baseline)", per_call_ms(fresh, rounds))]
        pyz = bundle(provider.paths.cache)
        big = home / "big.bin"
        big.write_bytes(os.urandom(16 << 20))
        dest = str(home / "dest")
        for name, t in (("netns", netns), ("ssh", ssh)):
            rows.append((f"{name}: put runtime ({pyz.stat().st_size // 1024} KiB)",
                         per_call_ms(lambda t=t, name=name: t.put(pyz, f"{dest}/{name}.pyz", 0o755),
                                     max(3, rounds // 5))))
            rows.append((f"{name}: put 16 MiB",
                         per_call_ms(lambda t=t, name=name: t.put(big, f"{dest}/{name}.bin"), 3)))
        print(f"{'operation':<42} {'median ms':>10} {'max ms':>9}")
        for label, (median, worst) in rows:
            print(f"{label:<42} {median:>10.1f} {worst:>9.1f}")
        kept, new = rows[1][1][0], rows[2][1][0]
        print(f"ssh kept connection vs new connection per command: {new / kept:.1f}x faster")
        print(f"ssh vs netns per command: {kept / rows[0][1][0]:.2f}x")
        ssh.close()
    finally:
        for i in (1, 2):
            provider.delete_host(app, f"host-{i}", i)
        provider.cleanup()
        shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()
