"""A TCP connection made inside a network namespace, from this process.

A thread enters the namespace with setns(2) (a network namespace is a property of the thread),
makes the connection and ends; the socket keeps the namespace it was made in, so its bytes then
flow straight between this process and the guest, with no relay process and no `ip netns exec`
start-up (what `ravel ssh` and `ravel proxy` pay on every connection otherwise).
"""

from __future__ import annotations

import ctypes
import os
import socket
import threading

from ..errors import TransportError

NETNS_DIR = "/run/netns"  # where `ip netns add` names namespaces
CLONE_NEWNET = 0x40000000
_libc: ctypes.CDLL | None = None


def _setns(fd: int) -> None:
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def netns_socket(host: str, namespace: str, address: str, port: int, timeout: float) -> socket.socket:
    """A connected socket to `address:port` as seen from inside `namespace` (blocking, no
    timeout once connected). TransportError naming the host and the address otherwise."""
    box: dict[str, object] = {}

    def inside() -> None:
        try:
            fd = os.open(os.path.join(NETNS_DIR, namespace), os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            box["error"] = f"network namespace {namespace} does not exist"
            return
        try:
            _setns(fd)
        except OSError as exc:
            box["error"] = f"cannot enter network namespace {namespace}: {exc.strerror}"
            return
        finally:
            os.close(fd)
        try:
            s = socket.create_connection((address, port), timeout=timeout)
        except socket.timeout:
            box["error"] = f"{address}:{port} did not answer within {timeout:.0f} s"
        except OSError as exc:
            box["error"] = f"cannot connect to {address}:{port}: {exc.strerror or exc}"
        else:
            s.settimeout(None)
            box["socket"] = s

    # this thread alone enters the namespace, and ends there
    t = threading.Thread(target=inside, name=f"netns-{namespace}", daemon=True)
    t.start()
    t.join(timeout + 5)
    sock = box.get("socket")
    if isinstance(sock, socket.socket):
        return sock
    raise TransportError(f"{host}: {box.get('error') or f'no connection to {address}:{port} in time'}")
