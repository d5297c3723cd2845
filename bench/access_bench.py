"""Guest access benchmark: one real Debian guest (the image `make setup` builds) on a local
namespace host, reached

- by `ravel ssh APP VM -- true` (end to end: ravel's start-up, OpenSSH, `ravel proxy` handing
  over a socket made in the host's namespace), against `ssh` run inside the host's namespace
  straight to the guest (same key, same pinned host key): median round trip of N, ratio;
- by `ravel cp` of a 100 MiB file into the guest, against `scp` run inside the host's namespace
  straight to the guest: throughput ratio, best of COPY_ROUNDS each, taken in turn, each copy
  starting once the guest has written the last one to its disk (`sync`: under TCG the guest's
  one CPU writing back 100 MiB slows whatever copy runs meanwhile, by up to a second).

Targets: ssh round trip <= 1.5 x direct; cp throughput >= 0.8 x direct scp.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
IMAGE = ROOT / ".cache" / "realguest" / "debian12-bios.qcow2"
ROUNDS = 7
COPY_ROUNDS = 3
COPY_MIB = 100


def main() -> None:
    if not IMAGE.exists():
        sys.exit(f"{IMAGE} is missing: run `make setup`")
    with tempfile.TemporaryDirectory(prefix="ravel-accessbench-", dir=ROOT / ".cache") as tmp:
        home = Path(tmp) / "home"
        home.mkdir()
        env = dict(os.environ, RAVEL_HOME=str(home))
        app = f"ab{os.getpid() % 10000}"

        def ravel(*args: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
            p = subprocess.run([sys.executable, "-m", "ravel", *args], capture_output=True, text=True, env=env,
                               cwd=ROOT, timeout=timeout, stdin=subprocess.DEVNULL)
            if p.returncode != 0:
                sys.exit(f"ravel {' '.join(args)} failed ({p.returncode}):\n{p.stdout}\n{p.stderr}")
            return p

        bp = home / "ab.yaml"
        bp.write_text(textwrap.dedent(f"""\
            name: {app}
            networks:
              lan: {{subnet: 10.96.0.0/24, gateway: 10.96.0.1, dhcp: true, dns: true}}
            vms:
              g:
                memory: 1GiB
                cloud_init: true
                disks: [{{image: {IMAGE}}}]
                nics: [{{network: lan}}]
            """))
        ravel("publish", str(bp), "--wait", "--timeout", "900", timeout=960)
        try:
            v = json.loads(ravel("status", app, "--json").stdout)[app][0]
            ip, ns = v["ips"][0].split("/")[0], f"rv-{app}-{v['host']}"
            known = home / "known"
            known.write_text(f"{ip} {v['host_key']}\n")
            direct = ["ip", "netns", "exec", ns, "ssh", "-F", "/dev/null", "-o", "BatchMode=yes",
                      "-o", "StrictHostKeyChecking=yes", "-o", f"UserKnownHostsFile={known}",
                      "-i", str(home / "state" / "keys" / "id_ed25519"), f"{v['user']}@{ip}"]
            via = [sys.executable, "-m", "ravel", "ssh", app, "g", "--"]

            def timed(argv: list[str]) -> float:
                t = time.monotonic()
                subprocess.run(argv, check=True, env=env, cwd=ROOT, stdin=subprocess.DEVNULL, capture_output=True,
                               timeout=300)
                return time.monotonic() - t

            timed(direct + ["true"])  # warm: the guest's sshd and page cache
            ravel_s, direct_s = [], []
            for _ in range(ROUNDS):  # in turn, so a slow spell of the machine hits both
                ravel_s.append(timed(via + ["true"]))
                direct_s.append(timed(direct + ["true"]))
            r_ssh, d_ssh = statistics.median(ravel_s), statistics.median(direct_s)

            blob = home / "blob"
            with blob.open("wb") as fh:
                fh.write(os.urandom(COPY_MIB << 20))
            scp = ["ip", "netns", "exec", ns, "scp", "-q", "-F", "/dev/null", "-o", "BatchMode=yes",
                   "-o", "StrictHostKeyChecking=yes", "-o", f"UserKnownHostsFile={known}",
                   "-i", str(home / "state" / "keys" / "id_ed25519"), str(blob), f"{v['user']}@{ip}:/tmp/direct.bin"]
            d_cps, r_cps = [], []
            for _ in range(COPY_ROUNDS):  # in turn; each starts with the guest's disk written back
                settle = direct + ["sync"]  # (the last copy's 100 MiB must not slow the next one)
                timed(settle)
                time.sleep(1)
                d_cps.append(timed(scp))
                timed(settle)
                time.sleep(1)
                r_cps.append(timed([sys.executable, "-m", "ravel", "cp", str(blob), f"{app}:g:/tmp/ravel.bin"]))
            d_cp, r_cp = min(d_cps), min(r_cps)
        finally:
            ravel("destroy", app, "--yes")
    mib = COPY_MIB
    ssh_ratio = r_ssh / d_ssh
    cp_ratio = (mib / r_cp) / (mib / d_cp)
    print(f"{'guest access (Debian 12, TCG)':34} {'ravel':>10} {'direct':>10} {'ratio':>7} {'target':>8}")
    print(f"{'ssh -- true, median of ' + str(ROUNDS):34} {r_ssh:9.2f}s {d_ssh:9.2f}s {ssh_ratio:7.2f} {'<= 1.5':>8}  "
          f"{'ok' if ssh_ratio <= 1.5 else 'MISSED'}")
    print(f"{f'cp {mib} MiB in, best of {COPY_ROUNDS}':34} {mib / r_cp:6.1f}MiB/s {mib / d_cp:6.1f}MiB/s {cp_ratio:7.2f} {'>= 0.8':>8}  "
          f"{'ok' if cp_ratio >= 0.8 else 'MISSED'}")
    print(f"  (cp times: ravel {', '.join(f'{t:.2f}' for t in r_cps)} s; scp {', '.join(f'{t:.2f}' for t in d_cps)} s)")
    print("targets:", "all met" if ssh_ratio <= 1.5 and cp_ratio >= 0.8 else "NOT all met")


if __name__ == "__main__":
    main()
