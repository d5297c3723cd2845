"""A guest's exposed service on this machine: relay a listening socket on 127.0.0.1 (made in the
root namespace by the local provider and passed in as fd 3) to the guest, from inside the
app's host namespace (the process is started with `ip netns exec`, so every socket it opens
itself lives there). Standard library only; run as a file:

    ip netns exec NS python3 relay.py --fd 3 --protocol tcp --target 10.0.0.5:80 --tag TAG

`--tag` is only there so the provider can recognise this process in /proc before it signals
it. Ends on SIGTERM/SIGINT. Every connection and wait is bounded.
"""

from __future__ import annotations

import argparse
import encodings.idna  # noqa: F401  (socket calls load it lazily; after dropping root it could not be read)
import os
import select
import signal
import socket
import sys
import threading
import time

CONNECT_TIMEOUT = 5.0
MAX_TCP = 128  # concurrent connections; more are refused (closed at once)
MAX_UDP_PEERS = 256
UDP_IDLE = 120.0  # a UDP client silent this long is forgotten
IDLE_TICK = 1.0
CHUNK = 65536
NOBODY = 65534

_stop = threading.Event()


def _pump(a: socket.socket, b: socket.socket) -> None:
    """Copy both ways until either side closes (half-close passed on) or we are told to stop."""
    open_dirs = {a: b, b: a}
    try:
        while open_dirs and not _stop.is_set():
            r, _, _ = select.select(list(open_dirs), [], [], IDLE_TICK)
            for src in r:
                try:
                    data = src.recv(CHUNK)
                except OSError:
                    data = b""
                dst = open_dirs[src]
                if not data:
                    del open_dirs[src]
                    try:
                        dst.shutdown(socket.SHUT_WR)
                    except OSError:
                        pass
                    continue
                try:
                    dst.sendall(data)
                except OSError:
                    return
    finally:
        a.close()
        b.close()


def _tcp(listener: socket.socket, target: tuple[str, int]) -> None:
    slots = threading.BoundedSemaphore(MAX_TCP)
    listener.settimeout(IDLE_TICK)

    def serve(client: socket.socket) -> None:
        try:
            upstream = socket.create_connection(target, timeout=CONNECT_TIMEOUT)
        except OSError as exc:
            print(f"relay: cannot reach {target[0]}:{target[1]}: {exc}", file=sys.stderr, flush=True)
            client.close()
            slots.release()
            return
        upstream.settimeout(None)
        client.settimeout(None)
        try:
            _pump(client, upstream)
        finally:
            slots.release()

    while not _stop.is_set():
        try:
            client, _ = listener.accept()
        except socket.timeout:
            continue
        except OSError:
            if _stop.is_set():
                return
            time.sleep(0.1)
            continue
        if not slots.acquire(blocking=False):
            client.close()
            continue
        threading.Thread(target=serve, args=(client,), daemon=True).start()


def _udp(listener: socket.socket, target: tuple[str, int]) -> None:
    peers: dict[tuple, tuple[socket.socket, float]] = {}  # client address -> (upstream, last seen)
    back: dict[socket.socket, tuple] = {}
    while not _stop.is_set():
        r, _, _ = select.select([listener, *back], [], [], IDLE_TICK)
        now = time.monotonic()
        for s in r:
            try:
                if s is listener:
                    data, client = listener.recvfrom(CHUNK)
                    entry = peers.get(client)
                    if entry is None:
                        if len(peers) >= MAX_UDP_PEERS:
                            continue
                        up = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                        up.connect(target)
                        back[up] = client
                        entry = (up, now)
                    peers[client] = (entry[0], now)
                    entry[0].send(data)
                else:
                    data = s.recv(CHUNK)
                    client = back[s]
                    listener.sendto(data, client)
                    peers[client] = (s, now)
            except OSError:
                continue
        for client, (up, seen) in list(peers.items()):
            if now - seen > UDP_IDLE:
                del peers[client]
                back.pop(up, None)
                up.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="relay")
    p.add_argument("--fd", type=int, required=True, help="the listening socket, inherited")
    p.add_argument("--protocol", choices=("tcp", "udp"), required=True)
    p.add_argument("--target", required=True, help="ADDRESS:PORT of the guest's service")
    p.add_argument("--tag", required=True)
    args = p.parse_args(argv)
    host, _, port = args.target.rpartition(":")
    target = (host, int(port))
    kind = socket.SOCK_STREAM if args.protocol == "tcp" else socket.SOCK_DGRAM
    listener = socket.socket(socket.AF_INET, kind, fileno=args.fd)
    if os.getuid() == 0:  # nothing here needs root: the socket is open, connecting needs nothing
        os.setgroups([])
        os.setgid(NOBODY)
        os.setuid(NOBODY)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: _stop.set())
    (_tcp if args.protocol == "tcp" else _udp)(listener, target)
    listener.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
