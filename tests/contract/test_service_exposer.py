"""One contract for every ServiceExposer (a provider that exposes guests' services): a service
inside a host becomes reachable where the exposure says, re-exposing keeps what matches,
a changed target keeps the user's port, and unexpose ends everything, records lost or not.

Implementations: the local provider (relays on 127.0.0.1 into a real host namespace). The
"guest" is a small server inside the host namespace on an address of a portless bridge there,
which is all a relay needs to see; no QEMU.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time

import pytest

from ravel.paths import paths
from ravel.plan.network import ServiceForward
from ravel.providers.base import HostSpec, ServiceExposer
from ravel.providers.local import LocalProvider, namespaces

APP = f"se{os.getpid()}"
GUEST = "10.77.0.5"
SERVER = r"""
import socket, sys, threading
addr = sys.argv[1]
t = socket.socket(); t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
t.bind((addr, 8080)); t.listen(8)
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.bind((addr, 5353))
def udp():
    while True:
        data, peer = u.recvfrom(2048); u.sendto(b"udp:" + data, peer)
threading.Thread(target=udp, daemon=True).start()
t.settimeout(300)
while True:
    c, peer = t.accept(); c.sendall(b"tcp:" + c.recv(100)); c.close()
"""


def make_local(home):
    return LocalProvider(paths({"RAVEL_HOME": str(home)}))


IMPLEMENTATIONS = {"local": make_local}


@pytest.fixture(scope="module", params=sorted(IMPLEMENTATIONS))
def world(request, tmp_path_factory):
    if os.geteuid() != 0:
        pytest.fail("service exposure contract tests need root (network namespaces)")
    provider = IMPLEMENTATIONS[request.param](tmp_path_factory.mktemp("home"))
    assert isinstance(provider, ServiceExposer)
    server = None
    try:
        host = provider.ensure_host(HostSpec(APP, "host-1", 1, "local-small"))
        ns = host.ref
        subprocess.run(["ip", "-n", ns, "link", "add", "g0", "type", "bridge"], check=True)
        subprocess.run(["ip", "-n", ns, "addr", "add", f"{GUEST}/24", "dev", "g0"], check=True)
        subprocess.run(["ip", "-n", ns, "link", "set", "g0", "up"], check=True)
        server = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-c", SERVER, GUEST],
                                  stdin=subprocess.DEVNULL)
        yield provider, {"host-1": host}
    finally:
        provider.unexpose(APP, [])
        if server is not None:
            server.kill()
            server.wait(timeout=10)
        provider.delete_host(APP, "host-1", 1)
        provider.cleanup()
        shutil.rmtree(provider.paths.app_run(APP), ignore_errors=True)  # the relays' logs
        left = [ns for ns in namespaces() if ns.startswith(f"rv-{APP}-")]
        assert not left, f"left behind: {left}"


def tcp(port: int, timeout: float = 10.0) -> bytes:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=3) as s:
                s.sendall(b"hi")
                data = s.recv(100)
                if data:
                    return data
        except OSError:
            pass
        if time.monotonic() >= deadline:
            return b""
        time.sleep(0.2)


def udp(port: int) -> bytes:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(3)
        s.sendto(b"hey", ("127.0.0.1", port))
        try:
            return s.recvfrom(100)[0]
        except OSError:
            return b""


def alive(e) -> bool:
    pid = e.extra.get("pid")
    return bool(pid) and os.path.exists(f"/proc/{pid}") and "Z" not in open(f"/proc/{pid}/stat").read().split()[2]


def closed(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(2)
        return s.connect_ex(("127.0.0.1", port)) != 0


def test_exposed_tcp_and_udp_services_answer_on_loopback(world):
    provider, hosts = world
    fws = [ServiceForward("v", "host-1", 8080, "tcp", GUEST), ServiceForward("v", "host-1", 5353, "udp", GUEST)]
    exposed = provider.expose(APP, hosts, fws, [])
    try:
        assert [(e.vm, e.port, e.protocol, e.address) for e in exposed] == [
            ("v", 8080, "tcp", "127.0.0.1"), ("v", 5353, "udp", "127.0.0.1")]
        assert tcp(exposed[0].host_port) == b"tcp:hi"
        assert udp(exposed[1].host_port) == b"udp:hey"
        assert exposed[0].label() == f"127.0.0.1:{exposed[0].host_port}->8080/tcp"
        # idempotent: the same request changes nothing
        assert provider.expose(APP, hosts, fws, exposed) == exposed
    finally:
        provider.unexpose(APP, exposed)
    assert not any(alive(e) for e in exposed)
    assert closed(exposed[0].host_port)


def test_a_fixed_port_is_used_and_a_changed_target_keeps_the_port(world):
    provider, hosts = world
    with socket.socket() as probe:  # a port that is free right now
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    (first,) = provider.expose(APP, hosts, [ServiceForward("v", "host-1", 8080, "tcp", "10.77.0.9", port)], [])
    try:
        assert first.host_port == port
        assert tcp(port, timeout=2) == b""  # nothing answers at 10.77.0.9
        (second,) = provider.expose(APP, hosts, [ServiceForward("v", "host-1", 8080, "tcp", GUEST, port)], [first])
        assert second.host_port == port and second.extra["pid"] != first.extra["pid"]
        assert not alive(first)
        assert tcp(port) == b"tcp:hi"
    finally:
        provider.unexpose(APP, [first, second] if "second" in locals() else [first])


def test_a_taken_fixed_port_is_a_clear_error(world):
    from ravel.errors import ProviderError

    provider, hosts = world
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        with pytest.raises(ProviderError, match=rf"v: cannot listen on 127.0.0.1:{port} for service 8080/tcp"):
            provider.expose(APP, hosts, [ServiceForward("v", "host-1", 8080, "tcp", GUEST, port)], [])


def test_unexpose_ends_relays_whose_record_was_lost(world):
    provider, hosts = world
    (e,) = provider.expose(APP, hosts, [ServiceForward("v", "host-1", 8080, "tcp", GUEST)], [])
    assert alive(e)
    provider.unexpose(APP, [])  # as after a publish killed before it saved what it started
    deadline = time.monotonic() + 5
    while alive(e) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not alive(e) and closed(e.host_port)
