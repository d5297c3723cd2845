"""Room a host keeps for itself, in both modes: its own OS, plumbing and page tables are not
guests' memory, so a packed host never swaps or wakes the OOM killer.

A reserve is a fixed part plus a share of the host's memory. The figures, and the measurements
behind them, are in docs/capacity.md ("Host reserve"); the short version:

- A cloud host is a whole Debian 12 machine. Booted with 2 and 8 GiB, the real Debian guest's
  kernel keeps ~2.4 % of the memory it is given for itself (struct page, its code and
  reserved ranges: MemTotal vs the memory given), and its userland with sshd, dnsmasq,
  nftables and ravel's host runtime holds ~230 MiB once booted; QEMU's page tables for the
  guests' RAM take 0.2 % more. Reserve: 512 MiB + 3 % (the rest is headroom for the page cache
  of the base images and the kernel's free-memory watermarks).
- A local host is a network namespace on this machine: the kernel is this machine's, counted
  once in MACHINE below; the namespace holds a dnsmasq, an sshd in SSH mode and, while waiting
  for readiness, one ravel-host process: 64 MiB.
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


CLOUD_HOST = Reserve(fixed_mib=512, share=0.03)
NAMESPACE_HOST = Reserve(fixed_mib=64, share=0.0)
MACHINE = Reserve(fixed_mib=1024, share=0.05, cpus=0)
