"""Room a host keeps for itself, in both modes: its own OS, plumbing and page tables are not
guests' memory, so a packed host never swaps or wakes the OOM killer.

A reserve is a fixed part plus a share of the host's memory. The figures, and the measurements
behind them, are in docs/capacity.md ("Host reserve"); the short version:

- A cloud host is a whole Debian 12 machine. The real Debian guest (bench/memory_bench.py),
  given 1 and 4 GiB, keeps 64 and 181 MiB for its kernel (memory given less MemTotal: about
  25 MiB + 3.8 %; a real r8i.xlarge shows 31.3 of its 32 GiB, 2.2 %), and its booted userland
  (systemd, journald, sshd, cloud-init's leftovers) holds 235-274 MiB (MemTotal less
  MemAvailable); a host adds dnsmasq (2 MiB), nftables and ravel's runtime (~30 MiB while it
  runs), and page tables for its guests' RAM (0.2 %). Reserve: 512 MiB + 4 %, which covers
  these with headroom for the page cache of the base images and the free-memory watermarks.
- A local host is a network namespace on this machine: the kernel is this machine's, counted
  once in MACHINE below; the namespace holds a dnsmasq (2 MiB measured), an sshd in SSH mode
  and, while it applies or waits for readiness, one ravel-host process (~30 MiB): 64 MiB.
- This machine keeps MACHINE for its own kernel, ravel's CLI and whatever the user runs
  beside the lab; the biggest local host type is the machine less this.

CPU: performance mode keeps `cpus` of every host for the host itself; cost mode shares the
host's CPUs with its plumbing through the scheduler (guests' vCPUs are overcommitted anyway).
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Reserve:
    fixed_mib: int
    share: float  # of the host's memory
    cpus: int = 1  # performance mode only

    def memory_mib(self, host_memory_mib: int) -> int:
        return self.fixed_mib + math.ceil(self.share * host_memory_mib)


CLOUD_HOST = Reserve(fixed_mib=512, share=0.04)
NAMESPACE_HOST = Reserve(fixed_mib=64, share=0.0)
MACHINE = Reserve(fixed_mib=1024, share=0.05, cpus=0)
