"""``ravel-host netem-relay``: link impairment in user space, for kernels without ``sch_netem``.

The frames a tap transmits (the ones its guest receives) are taken away from it by a ``clsact``
egress filter (``bpf``, ``mirred`` redirect) to a tap of this process's own (``rq…``, gone when it
ends); this process delays, drops, corrupts, duplicates and paces them as netem and tbf would,
and hands each back to the guest's tap through a packet socket whose frames carry a mark
(SO_MARK) that the filter lets pass, so nothing loops and a capture on the tap sees each frame
when the guest gets it. The filter is classic BPF (``bytecode``: load the mark, pass it when it
is ours, redirect anything else), so it needs no compiler. Standard library only; one process
per impaired tap, started and stopped by the host runtime (netem.py).

    python3 -m ravel.host netem-relay --tap rt1n0 --via rq1n0 --impair '{"delay_us": 100000}' --pidfile P
"""

from __future__ import annotations

import fcntl
import heapq
import json
import os
import random
import select
import signal
import socket
import struct
import subprocess
import sys
import time
from typing import Any, Dict, List, Tuple

TUNSETIFF = 0x400454CA
IFF_TAP, IFF_NO_PI = 0x0002, 0x1000
MARK = 0x72760001  # "rv": frames this relay hands back to the tap
SKF_AD_MARK = 0xFFFFF000 + 20  # classic BPF: load skb->mark (SKF_AD_OFF + SKF_AD_MARK)
QUEUE_LIMIT = 10000  # frames held at once (netem's limit)
TBF_LATENCY_S = 0.1  # a frame that would wait longer than this for the rate is dropped (tbf)


def filter_argv(tap: str, via: str) -> List[str]:
    # A = mark; A == MARK ? 0 (no match: the frame goes on to the guest) : -1 (match: redirect)
    bytecode = f"4,32 0 0 {SKF_AD_MARK},21 0 1 {MARK},6 0 0 0,6 0 0 4294967295"
    return ["tc", "filter", "add", "dev", tap, "egress", "pref", "1", "bpf", "bytecode", bytecode,
            "action", "mirred", "egress", "redirect", "dev", via]


class Impairment:
    """What happens to one frame: when it leaves (None: dropped), and whether it is sent twice."""

    def __init__(self, doc: Dict[str, Any], rng: random.Random) -> None:
        self.delay = int(doc.get("delay_us") or 0) / 1e6
        self.jitter = int(doc.get("jitter_us") or 0) / 1e6
        self.loss = float(doc.get("loss") or 0) / 100
        self.corrupt = float(doc.get("corrupt") or 0) / 100
        self.duplicate = float(doc.get("duplicate") or 0) / 100
        self.rate = int(doc.get("rate_kbit") or 0) * 1000  # bit/s
        self.rng = rng
        self.free_at = 0.0  # when the "wire" is free again (rate)

    def schedule(self, frame: bytes, now: float) -> List[Tuple[float, bytes]]:
        if self.loss and self.rng.random() < self.loss:
            return []
        if self.corrupt and self.rng.random() < self.corrupt and len(frame) > 14:
            i = self.rng.randrange(14, len(frame))  # a bit of the payload, as netem does
            frame = frame[:i] + bytes([frame[i] ^ (1 << self.rng.randrange(8))]) + frame[i + 1:]
        copies = 2 if self.duplicate and self.rng.random() < self.duplicate else 1
        out = []
        for _ in range(copies):
            at = now + max(0.0, self.delay + (self.rng.uniform(-self.jitter, self.jitter) if self.jitter else 0.0))
            if self.rate:
                start = max(at, self.free_at)
                if start - at > TBF_LATENCY_S:
                    continue  # the rate's queue is full: tbf drops it
                self.free_at = start + len(frame) * 8 / self.rate
                at = self.free_at
            out.append((at, frame))
        return out


def _open_tap(name: str) -> int:
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_CLOEXEC)
    fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), IFF_TAP | IFF_NO_PI))
    return fd


def run(tap: str, via: str, impair: Dict[str, Any], pidfile: str) -> int:
    stopping = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(1))
    signal.signal(signal.SIGINT, lambda *_: stopping.append(1))
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        fd = _open_tap(via)
        with open(f"/sys/class/net/{tap}/mtu") as f:  # jumbo frames pass through it too
            mtu = f.read().strip()
        subprocess.run(["ip", "link", "set", "dev", via, "mtu", mtu, "up"], check=True, capture_output=True,
                       timeout=10)
        out = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
        out.bind((tap, 0))
        out.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, MARK)
        subprocess.run(["tc", "filter", "del", "dev", tap, "egress", "pref", "1"], capture_output=True, timeout=10)
        subprocess.run(filter_argv(tap, via), check=True, capture_output=True, timeout=10)
    except (OSError, subprocess.SubprocessError) as exc:
        sys.stderr.write(f"ravel.host netem-relay: {tap}: {exc}\n")
        return 1
    with open(pidfile + ".tmp", "w") as f:
        f.write(f"{os.getpid()}\n")
    os.replace(pidfile + ".tmp", pidfile)
    os.set_blocking(fd, False)
    model = Impairment(impair, random.Random())
    held: List[Tuple[float, int, bytes]] = []
    seq = 0
    checked = time.monotonic()
    try:
        while not stopping:
            now = time.monotonic()
            if now - checked >= 1.0:  # its app destroyed (run_dir gone) or its tap gone: end
                checked = now
                if not os.path.exists(pidfile) or not os.path.exists(f"/sys/class/net/{tap}"):
                    return 0
            while held and held[0][0] <= now:
                _, _, frame = heapq.heappop(held)
                try:
                    out.send(frame)
                except OSError as exc:
                    if exc.errno in (19, 6, 100):  # ENODEV, ENXIO, ENETDOWN: the tap is gone
                        return 0
            wait = min(1.0, max(0.0, held[0][0] - time.monotonic())) if held else 1.0
            try:
                ready, _, _ = select.select([fd], [], [], wait)
            except InterruptedError:
                continue
            if not ready:
                continue
            for _ in range(256):  # a burst, then the due frames again
                try:
                    frame = os.read(fd, 65536)
                except BlockingIOError:
                    break
                now = time.monotonic()
                for at, f in model.schedule(frame, now):
                    if len(held) < QUEUE_LIMIT:
                        seq += 1
                        heapq.heappush(held, (at, seq, f))
    finally:
        subprocess.run(["tc", "filter", "del", "dev", tap, "egress", "pref", "1"], capture_output=True, timeout=10)
        try:
            os.unlink(pidfile)
        except OSError:
            pass
    return 0


def main(argv: List[str]) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="ravel.host netem-relay")
    p.add_argument("--tap", required=True)
    p.add_argument("--via", required=True)
    p.add_argument("--impair", required=True)
    p.add_argument("--pidfile", required=True)
    a = p.parse_args(argv)
    return run(a.tap, a.via, json.loads(a.impair), a.pidfile)
