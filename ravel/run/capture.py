"""`ravel capture`: tcpdump on the hosts (host/capture.py, one stream per interface through each
host's transport), read and merged here with dpkt into one pcap or pcapng, in time order.

Each packet once: a network's traffic is captured where it enters the network, on the host that
owns the sender. On every host carrying the network, each tap of a NIC on it gives the frames its
guest sends (`-Q in`), and the network's bridge gives the frames the host itself sends there
(`-Q out`: the gateway, DHCP, DNS). A frame that crosses to another host through VXLAN is not
captured there again. A NIC's capture is its tap both ways.
"""

from __future__ import annotations

import heapq
import queue
import threading
import time
from dataclasses import dataclass
from typing import Any, BinaryIO

import dpkt
from dpkt import pcapng

from ..errors import CommandFailed, StateError
from ..providers import get_provider
from .nics import bridges_of, nic_states, resolve_nic
from .sessions import Context, applied_hosts

SNAPLEN = 262144
HOLD_S = 0.3  # a packet waits this long for earlier ones from other hosts before it is written
POLL_S = 0.05
CLOSE_S = 5.0


@dataclass(frozen=True)
class Source:
    host: str
    iface: str
    direction: str  # in | out | inout


def sources(ctx: Context, app: str, target: str) -> list[Source]:
    """Where to capture `target` (a network, or VM[:NIC]) on each host."""
    bridges = bridges_of(ctx, app)
    if target in bridges and ":" not in target:
        taps = [n for n in nic_states(ctx, app) if n.network == target and n.tap]
        out = [Source(n.host, n.tap, "in") for n in taps]
        out += [Source(host, bridge, "out") for host, bridge in bridges[target]]
        return out
    try:
        nics = resolve_nic(ctx, app, target, need_one=False)
    except StateError as exc:
        if ":" not in target:
            raise StateError(f"app {app!r} has no network or VM {target!r}",
                             hint=f"networks: {', '.join(sorted(bridges)) or 'none'}") from exc
        raise
    missing = [f"{n.vm}:{n.index}" for n in nics if not n.tap]
    if missing:
        raise StateError(f"{', '.join(missing)}: not on any host yet", hint=f"`ravel publish` the app {app!r}")
    return [Source(n.host, n.tap, "inout") for n in nics]


class _StreamFile:
    """A host command's stdout as the file object dpkt reads (blocking, whole reads)."""

    def __init__(self, stream: Any) -> None:
        self.stream = stream

    def read(self, n: int) -> bytes:
        buf = bytearray()
        while len(buf) < n:
            chunk = self.stream.recv(n - len(buf))
            if not chunk:
                break
            buf += chunk
        return bytes(buf)


class _Writer:
    def __init__(self, out: BinaryIO, fmt: str, hosts: list[str]) -> None:
        self.out = out
        if fmt == "pcap":
            self.w: Any = dpkt.pcap.Writer(out, snaplen=SNAPLEN, linktype=dpkt.pcap.DLT_EN10MB)
            self.ng = False
        else:
            idbs = [pcapng.InterfaceDescriptionBlockLE(
                snaplen=SNAPLEN, linktype=dpkt.pcap.DLT_EN10MB,
                opts=[pcapng.PcapngOptionLE(code=pcapng.PCAPNG_OPT_IF_NAME, data=h.encode()),
                      pcapng.PcapngOptionLE(code=pcapng.PCAPNG_OPT_ENDOFOPT)]) for h in hosts]
            self.w = pcapng.Writer(out, idb=idbs)
            self.ng = True
        out.flush()

    def write(self, ts: float, iface: int, data: bytes) -> None:
        if self.ng:
            us = int(round(ts * 1e6))
            self.w.writepkt(pcapng.EnhancedPacketBlockLE(iface_id=iface, ts_high=us >> 32, ts_low=us & 0xFFFFFFFF,
                                                         caplen=len(data), pkt_len=len(data), pkt_data=data))
        else:
            self.w.writepkt(data, ts)
        self.out.flush()


def capture(ctx: Context, app: str, target: str, out: BinaryIO, fmt: str = "pcapng", bpf: str | None = None,
            count: int | None = None, duration: float | None = None) -> int:
    """Write `target`'s packets to `out` until `count` packets, `duration` seconds, every
    stream's end, or Ctrl-C; returns how many were written. BrokenPipeError when the reader of
    `out` goes away (the hosts' captures are ended first)."""
    rec = ctx.state.require_app(app)
    where = sources(ctx, app, target)
    if not where:
        raise StateError(f"nothing to capture for {target!r} in app {app!r}")
    provider = get_provider(rec.provider, ctx.paths)
    applied = {h.host.name: h.host for h in applied_hosts(ctx.state, app)}
    hosts = sorted({s.host for s in where})
    index = {h: i for i, h in enumerate(hosts)}
    packets: queue.Queue[tuple[float, int, bytes] | None] = queue.Queue()
    streams = []
    try:
        for s in where:
            if s.host not in applied:
                raise StateError(f"host {s.host} of app {app!r} is not reachable from the state",
                                 hint=f"`ravel publish` the app {app!r} again")
            runtime = ctx.hosts.runtime(provider, applied[s.host])
            argv = [runtime.python, runtime.pyz, "capture", "--iface", s.iface, "--direction", s.direction]
            if count:
                argv += ["--count", str(count)]
            if bpf:
                argv += ["--filter", bpf]
            streams.append((s, runtime.t.stream(argv)))
        writer = _Writer(out, fmt, hosts)
        failures: list[tuple[Source, str]] = []
        readers = [threading.Thread(target=_read, args=(st, index[s.host], packets, s, failures), daemon=True,
                                    name=f"capture-{s.host}-{s.iface}") for s, st in streams]
        for t in readers:
            t.start()
        written = _merge(packets, writer, len(readers), count, duration)
        if failures and len(failures) == len(streams):  # tcpdump refused on every host: say why
            s, why = failures[0]
            raise CommandFailed(s.host, f"tcpdump -i {s.iface}", 1, why)
        return written
    finally:
        for _, st in streams:
            st.close()


def _read(stream: Any, iface: int, packets: queue.Queue, source: Source,
          failures: list[tuple[Source, str]]) -> None:
    try:
        reader = dpkt.pcap.Reader(_StreamFile(stream))
    except (ValueError, OSError, EOFError, dpkt.NeedData, dpkt.UnpackError):
        # no pcap header: tcpdump never started (a bad filter, a missing interface or tcpdump)
        failures.append((source, stream.stderr(2.0).decode(errors="replace").strip() or "no pcap from tcpdump"))
        packets.put(None)
        return
    try:
        for ts, data in reader:
            packets.put((ts, iface, bytes(data)))
    except (ValueError, OSError, EOFError, dpkt.NeedData, dpkt.UnpackError):
        pass  # the stream ended mid-packet: it was stopped
    finally:
        packets.put(None)


def _merge(packets: queue.Queue, writer: _Writer, streams: int, count: int | None,
           duration: float | None) -> int:
    """Write packets in timestamp order; each waits HOLD_S after its arrival for earlier ones
    from slower streams."""
    end = time.monotonic() + duration if duration else None
    held: list[tuple[float, int, float, int, bytes]] = []  # (ts, seq, arrival, iface, data)
    seq = written = 0
    ended = 0
    try:
        while True:
            now = time.monotonic()
            if end is not None and now >= end:
                break
            try:
                item = packets.get(timeout=POLL_S)
            except queue.Empty:
                item = False
            if item is None:
                ended += 1
            elif item:
                ts, iface, data = item
                seq += 1
                heapq.heappush(held, (ts, seq, time.monotonic(), iface, data))
            done = ended >= streams
            while held and (done or held[0][2] + HOLD_S <= time.monotonic()):
                ts, _, _, iface, data = heapq.heappop(held)
                writer.write(ts, iface, data)
                written += 1
                if count and written >= count:
                    return written
            if done and not held:
                break
    except KeyboardInterrupt:
        pass
    # what is held when time is up or the user stops it is written too (in order)
    while held and not (count and written >= count):
        ts, _, _, iface, data = heapq.heappop(held)
        writer.write(ts, iface, data)
        written += 1
    return written
