"""``ravel-host capture``: tcpdump on one interface of this host, its pcap on stdout.

    python3 -m ravel.host capture --iface rt1n0 [--direction in|out|inout] [--count N] [--filter BPF]

The pcap passes through untouched (ravel merges the streams of every host: run/capture.py).
tcpdump ends with this process, however it ends: when stdin ends (ravel hung up, or the SSH
channel closed), on SIGTERM/SIGHUP/SIGINT, or if this process dies (PR_SET_PDEATHSIG).
"""

from __future__ import annotations

import ctypes
import signal
import subprocess
import sys
import threading
from typing import List, Optional

PR_SET_PDEATHSIG = 1
SNAPLEN = 262144
STOP_WAIT_S = 5.0


def tcpdump_argv(iface: str, direction: str, count: Optional[int], bpf: str) -> List[str]:
    argv = ["tcpdump", "-i", iface, "-w", "-", "-U", "--immediate-mode", "-s", str(SNAPLEN), "-n", "-q"]
    if direction in ("in", "out"):
        argv += ["-Q", direction]
    if count:
        argv += ["-c", str(count)]
    if bpf:
        argv.append(bpf)
    return argv


def _die_with_parent() -> None:
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        pass


def run(iface: str, direction: str, count: Optional[int], bpf: str) -> int:
    try:
        p = subprocess.Popen(tcpdump_argv(iface, direction, count, bpf), stdin=subprocess.DEVNULL,
                             stdout=subprocess.PIPE, preexec_fn=_die_with_parent)
    except FileNotFoundError:
        sys.stderr.write("ravel.host capture: tcpdump is not installed on this host (apt-get install tcpdump)\n")
        return 1
    assert p.stdout is not None

    def stop(*_: object) -> None:
        if p.poll() is None:
            p.terminate()

    for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT, signal.SIGPIPE):
        signal.signal(sig, stop)

    def watch_stdin() -> None:  # ravel hung up: end the capture
        try:
            while sys.stdin.buffer.read1(4096):
                pass
        except (OSError, ValueError):
            pass
        stop()

    threading.Thread(target=watch_stdin, daemon=True).start()
    out = sys.stdout.buffer
    try:
        while True:
            chunk = p.stdout.read1(1 << 16)
            if not chunk:
                break
            out.write(chunk)
            out.flush()
    except (BrokenPipeError, OSError):
        stop()
    try:
        return p.wait(STOP_WAIT_S)
    except subprocess.TimeoutExpired:
        p.kill()
        return p.wait(STOP_WAIT_S)
